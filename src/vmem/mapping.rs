//! `Mapping`: one contiguous run of virtual to physical addresses.

use crate::arch::{Access, Flags, PageSize, Perms, Rights};

/// Rights of an ordinary mapping.
#[derive(Debug, PartialEq, Eq, Clone, Copy, Hash)]
pub struct BasicMapping {
    /// Data reads are allowed.
    pub readable: bool,
    /// Data writes are allowed.
    pub writable: bool,
    /// Instruction fetches are allowed.
    pub executable: bool,
}

/// Rights of a copy-on-write mapping: read-only now, writable after the
/// page is copied. Marked in the entry by a software-available bit.
#[derive(Debug, PartialEq, Eq, Clone, Copy, Hash)]
pub struct CowMapping {
    /// Data reads are allowed.
    pub readable: bool,
    /// Instruction fetches are allowed.
    pub executable: bool,
}

/// What a range of virtual addresses maps to.
#[derive(Debug, PartialEq, Eq, Clone, Copy, Hash)]
pub enum MappingKind {
    /// Nothing: accesses fault.
    Unmapped,
    /// An ordinary mapping.
    Basic(BasicMapping),
    /// A copy-on-write mapping.
    Cow(CowMapping),
}

impl MappingKind {
    /// The kind described by effective rights and the CoW marker. A CoW
    /// marker on a writable entry is ignored (the copy already happened).
    #[inline]
    pub fn from_perms(perms: Perms, cow: bool) -> MappingKind {
        let readable = perms.contains(Perms::READ);
        let executable = perms.owner_executable();
        if cow && !perms.contains(Perms::WRITE) {
            MappingKind::Cow(CowMapping {
                readable,
                executable,
            })
        } else {
            MappingKind::Basic(BasicMapping {
                readable,
                writable: perms.contains(Perms::WRITE),
                executable,
            })
        }
    }

    /// The access rights (without [`Perms::USER`]) and whether the kind is
    /// copy-on-write.
    pub fn perms(self) -> (Perms, bool) {
        match self {
            MappingKind::Unmapped => (Perms::empty(), false),
            MappingKind::Basic(b) => (
                Perms::READ.intersection(bit(b.readable))
                    | Perms::WRITE.intersection(bit(b.writable))
                    | EXEC.intersection(bit(b.executable)),
                false,
            ),
            MappingKind::Cow(c) => (
                Perms::READ.intersection(bit(c.readable)) | EXEC.intersection(bit(c.executable)),
                true,
            ),
        }
    }
}

/// The rights `kind` grants the privileged level, and the user level too
/// when `user`.
fn plain_rights(kind: MappingKind, user: bool) -> Rights {
    let (perms, _) = kind.perms();
    let mut access = Access::empty();
    access.set(Access::READ, perms.contains(Perms::READ));
    access.set(Access::WRITE, perms.contains(Perms::WRITE));
    access.set(Access::EXEC, perms.contains(Perms::EXEC));
    Rights {
        kernel: access,
        user: if user { access } else { Access::empty() },
    }
}

/// "Executable", for whichever level ends up owning the page.
const EXEC: Perms = Perms::EXEC.union(Perms::USER_EXEC);

fn bit(on: bool) -> Perms {
    if on {
        Perms::all()
    } else {
        Perms::empty()
    }
}

/// One contiguous run of virtual addresses mapped to contiguous physical
/// addresses with the same attributes: what a walk found.
///
/// As the output of [`crate::vmem::virt_to_phys`], a `Mapping` is coalesced:
/// neighbouring leaves of the same page size, with contiguous physical
/// addresses and equal attributes, come out as one `Mapping`. `kind` and
/// `user_accessible` are what the entries say; `rights` is what the CPU
/// allows each level once its controls (SMEP, SMAP, WP, PAN…) are applied.
///
/// To ask [`crate::vmem::map`] for a mapping, build a [`MapRequest`]. (A
/// `Mapping` is still accepted there, its `page_size` read as the largest
/// leaf allowed: the crate's older convention.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// First physical address.
    pub phys_base: u64,
    /// First virtual address (canonical).
    pub virt_base: u64,
    /// Length in bytes.
    pub len: u64,
    /// Rights (effective across all levels when read from tables).
    pub kind: MappingKind,
    /// Whether the less privileged level may access the mapping.
    pub user_accessible: bool,
    /// Attributes other than rights (global, accessed, dirty, caching…).
    /// Never contains [`Flags::COW`]: that is part of `kind`.
    pub flags: Flags,
    /// Leaf page size.
    pub page_size: PageSize,
    /// What each privilege level may do, as the MMU decides with the
    /// CPU's controls; [`Mapping::new`] and [`Mapping::user`] fill in the
    /// plain reading of `kind`.
    pub rights: Rights,
}

impl Mapping {
    /// A supervisor mapping with no extra attributes and any page size.
    pub fn new(virt_base: u64, phys_base: u64, len: u64, kind: MappingKind) -> Mapping {
        Mapping {
            phys_base,
            virt_base,
            len,
            kind,
            user_accessible: false,
            flags: Flags::empty(),
            page_size: PageSize::LARGEST,
            rights: plain_rights(kind, false),
        }
    }

    /// The same mapping, accessible from user mode.
    pub fn user(mut self) -> Mapping {
        self.user_accessible = true;
        self.rights = plain_rights(self.kind, true);
        self
    }

    /// The same mapping, limited to leaves of at most `size` when given to
    /// `map`.
    #[deprecated(note = "ask `map` with a `MapRequest` and its `max_page_size`")]
    pub fn max_page_size(mut self, size: PageSize) -> Mapping {
        self.page_size = size;
        self
    }

    /// The same mapping with these extra attributes.
    pub fn with_flags(mut self, flags: Flags) -> Mapping {
        self.flags = flags.difference(Flags::COW);
        self
    }

    /// The effective rights including [`Perms::USER`].
    pub fn perms(&self) -> Perms {
        let (perms, _) = self.kind.perms();
        if self.user_accessible {
            perms | Perms::USER
        } else {
            perms
        }
    }

    /// Whether `next` continues this mapping exactly (same attributes, page
    /// size, and both addresses contiguous).
    pub fn continues_with(&self, next: &Mapping) -> bool {
        self.virt_base.checked_add(self.len) == Some(next.virt_base)
            && self.phys_base.checked_add(self.len) == Some(next.phys_base)
            && self.kind == next.kind
            && self.user_accessible == next.user_accessible
            && self.flags == next.flags
            && self.page_size == next.page_size
    }

    /// The last virtual address of the mapping (inclusive).
    pub fn virt_last(&self) -> u64 {
        self.virt_base.wrapping_add(self.len.wrapping_sub(1))
    }
}

/// What [`crate::vmem::map`] is asked to map: `len` bytes from `virt_base`
/// to `phys_base`, with these rights and attributes, in leaves no larger
/// than `max_page_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MapRequest {
    /// First virtual address (canonical).
    pub virt_base: u64,
    /// First physical address.
    pub phys_base: u64,
    /// Length in bytes.
    pub len: u64,
    /// Rights ([`MappingKind::Unmapped`] unmaps the range).
    pub kind: MappingKind,
    /// Whether the less privileged level may access the mapping.
    pub user_accessible: bool,
    /// Attributes other than rights (global, caching…); [`Flags::COW`] is
    /// ignored (that is part of `kind`), as are flags the format lacks.
    pub flags: Flags,
    /// The largest leaf `map` may use ([`PageSize::LARGEST`]: any).
    pub max_page_size: PageSize,
}

impl MapRequest {
    /// A supervisor mapping with no extra attributes, in leaves of any size.
    pub fn new(virt_base: u64, phys_base: u64, len: u64, kind: MappingKind) -> MapRequest {
        MapRequest {
            virt_base,
            phys_base,
            len,
            kind,
            user_accessible: false,
            flags: Flags::empty(),
            max_page_size: PageSize::LARGEST,
        }
    }

    /// The same request, accessible from user mode.
    pub fn user(mut self) -> MapRequest {
        self.user_accessible = true;
        self
    }

    /// The same request, in leaves of at most `size`.
    pub fn max_page_size(mut self, size: PageSize) -> MapRequest {
        self.max_page_size = size;
        self
    }

    /// The same request with these extra attributes.
    pub fn with_flags(mut self, flags: Flags) -> MapRequest {
        self.flags = flags.difference(Flags::COW);
        self
    }
}

/// The older convention: a [`Mapping`] whose `page_size` is the largest
/// leaf allowed.
impl From<&Mapping> for MapRequest {
    fn from(m: &Mapping) -> MapRequest {
        MapRequest {
            virt_base: m.virt_base,
            phys_base: m.phys_base,
            len: m.len,
            kind: m.kind,
            user_accessible: m.user_accessible,
            flags: m.flags,
            max_page_size: m.page_size,
        }
    }
}

impl From<&MapRequest> for MapRequest {
    fn from(request: &MapRequest) -> MapRequest {
        *request
    }
}

//! [`DumpError`]: why a dump cannot be served, and the formats known by
//! their first bytes that are not read.

use std::fmt;
use std::path::PathBuf;

/// Why a dump cannot be served.
#[derive(Debug)]
#[non_exhaustive]
pub enum DumpError {
    /// The file cannot be opened or mapped.
    Io(PathBuf, std::io::Error),
    /// Not a little-endian ELF64 core file.
    NotACore(String),
    /// A segment claims bytes past the end of the file.
    Truncated {
        /// The segment's guest-physical address.
        gpa: u64,
        /// Where it would end in the file.
        end: u64,
        /// How long the file is.
        file_len: u64,
    },
    /// A part of the file (headers, bitmaps, descriptors, notes) would end
    /// past the end of the file.
    Cut {
        /// What would be cut.
        what: &'static str,
        /// Where it would end in the file.
        end: u64,
        /// How long the file is.
        file_len: u64,
    },
    /// Two RAM segments claim the same guest-physical address.
    Overlap(u64),
    /// No CPU state: no "QEMU" CPU-state note, nor `NT_PRSTATUS` notes
    /// with a VMCOREINFO that names the kernel's page tables.
    NoCpus,
    /// A note is cut short or has an unknown layout.
    BadNote(String),
    /// A kdump-compressed file whose headers lie (the field and why).
    Kdump(String),
    /// A flattened file whose records lie or end early.
    Flattened(String),
    /// A dump format recognised by its magic bytes, but not read.
    Unsupported(&'static str),
}

/// What the formats we read are, for errors about those we do not.
const READABLE: &str = "readable: ELF cores (QEMU dump-guest-memory, virsh dump \
                        --memory-only), kdump-compressed dumps plain or flattened (QEMU \
                        dump-guest-memory -z/-l/-s, virsh dump --format=kdump-*, makedumpfile) \
                        and raw RAM images (--raw)";

/// Dump and image formats known by their first bytes, which this target
/// does not read.
const UNSUPPORTED_MAGICS: &[(&[u8], &str)] = &[
    (b"DISKDUMP", "a diskdump file"),
    (b"QEVM", "a QEMU migration stream or savevm state"),
    (b"QFI\xfb", "a qcow2 disk image (a savevm snapshot inside?)"),
    (b"PAGEDU64", "a Windows 64-bit crash dump"),
    (b"PAGEDUMP", "a Windows 32-bit crash dump"),
];

/// The unsupported format `data` starts like, if any.
pub(crate) fn unsupported_format(data: &[u8]) -> Option<&'static str> {
    UNSUPPORTED_MAGICS
        .iter()
        .find(|(magic, _)| data.starts_with(magic))
        .map(|(_, what)| *what)
}

impl fmt::Display for DumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DumpError::Io(path, e) => write!(f, "{}: {e}", path.display()),
            DumpError::NotACore(why) => {
                write!(f, "not a QEMU memory dump: {why} ({READABLE})")
            }
            DumpError::Truncated { gpa, end, file_len } => write!(
                f,
                "the RAM at {gpa:#x} ends at byte {end:#x} of a {file_len:#x}-byte file (truncated dump?)"
            ),
            DumpError::Cut {
                what,
                end,
                file_len,
            } => write!(
                f,
                "the {what} end at byte {end:#x} of a {file_len:#x}-byte file (truncated dump?)"
            ),
            DumpError::Overlap(gpa) => write!(f, "two RAM segments both hold {gpa:#x}"),
            DumpError::NoCpus => f.write_str(
                "the dump has no CPU state: no QEMU CPU-state notes, and no NT_PRSTATUS with a \
                 VMCOREINFO naming the kernel's page tables",
            ),
            DumpError::BadNote(why) => write!(f, "bad note: {why}"),
            DumpError::Kdump(why) => write!(f, "bad kdump-compressed dump: {why}"),
            DumpError::Flattened(why) => write!(f, "bad flattened dump: {why}"),
            DumpError::Unsupported(what) => write!(f, "{what}: not read ({READABLE})"),
        }
    }
}

impl std::error::Error for DumpError {}

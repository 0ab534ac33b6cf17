//! # vmem-gdbstub
//!
//! A page-table library (`vmem`) that reads and writes the page tables of
//! any guest through an accessor, and (with the default `kvm` feature) a
//! gdbstub target that lets stock gdb debug a KVM guest and inspect its
//! address spaces.
//!
//! The [`vmem`] and [`arch`] modules are `no_std` + `alloc`: build with
//! `--no-default-features` to use them inside a guest kernel.
//!
//! ```
//! use vmem_gdbstub::arch::Amd64;
//! use vmem_gdbstub::vmem::{self, BufferTables, MapRequest, MappingKind, BasicMapping};
//!
//! // 1 MiB of "physical memory" at PA 0, tables allocated from all of it.
//! let tables = BufferTables::new(vec![0u8; 1 << 20], 0, 0..1 << 20).unwrap();
//! let rw = MappingKind::Basic(BasicMapping { readable: true, writable: true, executable: false });
//! vmem::map(&Amd64::FOUR_LEVEL, &tables, MapRequest::new(0xffff_8000_0000_0000, 0x20_0000, 0x40_0000, rw)).unwrap();
//! let mappings: Vec<_> = vmem::virt_to_phys(&Amd64::FOUR_LEVEL, &tables, 0, u64::MAX)
//!     .collect::<Result<_, _>>()
//!     .unwrap();
//! assert_eq!(mappings.len(), 1);
//! assert_eq!(mappings[0].page_size, vmem::PageSize::SIZE_2M);
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]

extern crate alloc;

pub mod arch;
#[cfg(feature = "kvm")]
pub mod target;
pub mod vmem;

/// The examples of docs/library.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/library.md")]
struct LibraryGuide;

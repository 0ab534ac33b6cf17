//! Loading a static ELF64 into guest RAM.

use elf::abi::PT_LOAD;
use elf::endian::LittleEndian;
use elf::ElfBytes;
use vmem_gdbstub::target::GuestRam;

/// One loaded segment: where it lives and is mapped.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub vaddr: u64,
    pub paddr: u64,
    pub memsz: u64,
    pub writable: bool,
    pub executable: bool,
}

/// A loaded image.
#[derive(Debug)]
pub struct Image {
    pub entry: u64,
    pub segments: Vec<Segment>,
}

/// Copy every PT_LOAD segment of `bytes` to its physical address (zeroing
/// the part past the file data).
pub fn load(bytes: &[u8], mem: &GuestRam) -> Result<Image, String> {
    let file = ElfBytes::<LittleEndian>::minimal_parse(bytes)
        .map_err(|e| format!("not an ELF64 file: {e}"))?;
    let segments = file.segments().ok_or("the ELF has no program headers")?;
    let mut loaded = Vec::new();
    for ph in segments.iter().filter(|ph| ph.p_type == PT_LOAD) {
        let data = file
            .segment_data(&ph)
            .map_err(|e| format!("bad segment: {e}"))?;
        let filesz = usize::try_from(ph.p_filesz).map_err(|_| "segment too large")?;
        let memsz = usize::try_from(ph.p_memsz).map_err(|_| "segment too large")?;
        let mut image = vec![0u8; memsz.max(filesz)];
        image[..filesz].copy_from_slice(&data[..filesz]);
        mem.write(ph.p_paddr, &image).map_err(|e| {
            format!(
                "segment at physical {:#x} does not fit in guest RAM ({e})",
                ph.p_paddr
            )
        })?;
        loaded.push(Segment {
            vaddr: ph.p_vaddr,
            paddr: ph.p_paddr,
            memsz: ph.p_memsz,
            writable: ph.p_flags & elf::abi::PF_W != 0,
            executable: ph.p_flags & elf::abi::PF_X != 0,
        });
    }
    if loaded.is_empty() {
        return Err("the ELF has no loadable segments".into());
    }
    Ok(Image {
        entry: file.ehdr.e_entry,
        segments: loaded,
    })
}

/// The address of symbol `name`, if the ELF has a symbol table with it.
pub fn symbol(bytes: &[u8], name: &str) -> Option<u64> {
    let file = ElfBytes::<LittleEndian>::minimal_parse(bytes).ok()?;
    let (symbols, strings) = file.symbol_table().ok()??;
    symbols
        .iter()
        .find(|s| strings.get(s.st_name as usize).ok() == Some(name))
        .map(|s| s.st_value)
}

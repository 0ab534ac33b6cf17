//! Host I/O (`vFile:*`): how gdb reads the exec-file it was told of
//! (`qXfer:exec-file`) — the guest's ELF or a symbol file the VMM built —
//! through the stub, so neither side needs a file at a shared path. Only
//! that one file opens, read-only; every other name is "no such file".

use super::target::KvmTarget;

/// The `vFile` extensions over a target with `inner` (its exec-file) and
/// `open_files`: the gdbstub `Target`s of live VMs and x86 dumps
/// ([`KvmTarget`]) and of arm64 dumps serve the same one file.
macro_rules! serve_exec_file {
    ($target:ty) => {
        const _: () = {
            use gdbstub::target::ext::host_io::{
                FsKind, HostIo, HostIoClose, HostIoCloseOps, HostIoErrno, HostIoError, HostIoFstat,
                HostIoFstatOps, HostIoOpen, HostIoOpenFlags, HostIoOpenMode, HostIoOpenOps,
                HostIoPread, HostIoPreadOps, HostIoResult, HostIoSetfs, HostIoSetfsOps, HostIoStat,
            };
            use log::debug;
            use $crate::target::dump::host_file::MAX_OPEN;

            impl HostIo for $target {
                fn support_open(&mut self) -> Option<HostIoOpenOps<'_, Self>> {
                    Some(self)
                }

                fn support_close(&mut self) -> Option<HostIoCloseOps<'_, Self>> {
                    Some(self)
                }

                fn support_pread(&mut self) -> Option<HostIoPreadOps<'_, Self>> {
                    Some(self)
                }

                fn support_fstat(&mut self) -> Option<HostIoFstatOps<'_, Self>> {
                    Some(self)
                }

                fn support_setfs(&mut self) -> Option<HostIoSetfsOps<'_, Self>> {
                    Some(self)
                }
            }

            impl HostIoOpen for $target {
                fn open(
                    &mut self,
                    filename: &[u8],
                    flags: HostIoOpenFlags,
                    _mode: HostIoOpenMode,
                ) -> HostIoResult<u32, Self> {
                    let name = String::from_utf8_lossy(filename);
                    let writes = HostIoOpenFlags::O_WRONLY
                        | HostIoOpenFlags::O_RDWR
                        | HostIoOpenFlags::O_CREAT
                        | HostIoOpenFlags::O_TRUNC
                        | HostIoOpenFlags::O_APPEND;
                    if flags.intersects(writes) {
                        debug!("vFile:open {name}: refused, not read-only");
                        return Err(HostIoError::Errno(HostIoErrno::EACCES));
                    }
                    let Some(bytes) = self.inner.exec_file.as_ref().and_then(|f| f.open(filename))
                    else {
                        debug!("vFile:open {name}: not the exec-file");
                        return Err(HostIoError::Errno(HostIoErrno::ENOENT));
                    };
                    let files = &mut self.open_files.0;
                    let slot = match files.iter().position(Option::is_none) {
                        Some(free) => free,
                        None if files.len() < MAX_OPEN => {
                            files.push(None);
                            files.len() - 1
                        }
                        None => return Err(HostIoError::Errno(HostIoErrno::EMFILE)),
                    };
                    debug!("vFile:open {name}: fd {slot}, {} bytes", bytes.len());
                    files[slot] = Some(bytes);
                    Ok(slot as u32)
                }
            }

            impl HostIoClose for $target {
                fn close(&mut self, fd: u32) -> HostIoResult<(), Self> {
                    self.open_files.get(fd).map_err(HostIoError::Errno)?;
                    self.open_files.0[fd as usize] = None;
                    Ok(())
                }
            }

            impl HostIoPread for $target {
                fn pread(
                    &mut self,
                    fd: u32,
                    count: usize,
                    offset: u64,
                    buf: &mut [u8],
                ) -> HostIoResult<usize, Self> {
                    Ok($crate::target::stub::target::copy_at(
                        self.open_files.get(fd).map_err(HostIoError::Errno)?,
                        offset,
                        count,
                        buf,
                    ))
                }
            }

            impl HostIoFstat for $target {
                fn fstat(&mut self, fd: u32) -> HostIoResult<HostIoStat, Self> {
                    let size = self.open_files.get(fd).map_err(HostIoError::Errno)?.len() as u64;
                    Ok(HostIoStat {
                        st_dev: 0,
                        st_ino: 0,
                        st_mode: HostIoOpenMode::S_IFREG
                            | HostIoOpenMode::S_IRUSR
                            | HostIoOpenMode::S_IRGRP
                            | HostIoOpenMode::S_IROTH,
                        st_nlink: 1,
                        st_uid: 0,
                        st_gid: 0,
                        st_rdev: 0,
                        st_size: size,
                        st_blksize: 4096,
                        st_blocks: size.div_ceil(512),
                        st_atime: 0,
                        st_mtime: 0,
                        st_ctime: 0,
                    })
                }
            }

            impl HostIoSetfs for $target {
                fn setfs(&mut self, fs: FsKind) -> HostIoResult<(), Self> {
                    // The exec-file is the same whichever process gdb names.
                    debug!("vFile:setfs {fs:?}");
                    Ok(())
                }
            }
        };
    };
}

pub(super) use serve_exec_file;

serve_exec_file!(KvmTarget);

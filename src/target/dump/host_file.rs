//! Host files named by a gdb client (`monitor chardev-add`, `monitor vmem
//! diff --dump`) and the files the stub hands gdb over the protocol
//! (`vFile`). A client controls the guest, not the host: what it names is
//! opened only if it is a regular file — never a FIFO (which would block
//! the stub for good), a device (whose driver acts on open), a directory or
//! a symbolic link — and every refusal reads the same, so errors do not
//! tell which host files exist.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use gdbstub::target::ext::host_io::HostIoErrno;
use log::debug;

/// Open a host file a gdb client named (`chardev-add`, `vmem diff
/// --dump`): refused when the VMM turned that off
/// ([`crate::target::DebuggerBuilder::host_files`]), else as [`open_regular`].
pub(crate) fn open_client_named(allowed: bool, path: &Path) -> Result<File, String> {
    if !allowed {
        return Err("this VMM does not let gdb name host files".into());
    }
    open_regular(path)
}

/// Open `path` read-only if it is a regular file (not through a symbolic
/// link), without blocking.
pub(crate) fn open_regular(path: &Path) -> Result<File, String> {
    let refused = || {
        format!(
            "{}: not opened (only existing regular files, not links, devices or FIFOs)",
            path.display()
        )
    };
    // O_PATH runs no driver's open and cannot block; O_NOFOLLOW makes a
    // final symbolic link the file itself, which is then refused.
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            debug!("{}: {e}", path.display());
            refused()
        })?;
    let kind = handle.metadata().map_err(|_| refused())?.file_type();
    if !kind.is_file() {
        debug!("{}: refused, a {kind:?}", path.display());
        return Err(refused());
    }
    // The inode the handle holds is a regular file: reopening it through
    // the handle reads that very file, whatever the path names by now.
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
        .map_err(|e| {
            debug!("{}: reopening: {e}", path.display());
            refused()
        })
}

/// The file gdb asks for with `qXfer:exec-file` and then reads with
/// `vFile:open`/`pread`/`close`: its name, and its bytes or where the
/// host has them. Nothing else is served.
#[derive(Debug, Clone)]
pub(crate) struct ExecFile {
    /// The path gdb is told.
    pub(crate) name: String,
    contents: ExecContents,
}

#[derive(Debug, Clone)]
enum ExecContents {
    /// A host file, read when gdb opens it.
    Host,
    /// Bytes the VMM built (e.g. a symbol file), never on disk.
    Bytes(Arc<[u8]>),
}

impl ExecFile {
    /// The host file at `path`.
    pub(crate) fn host(path: String) -> ExecFile {
        ExecFile {
            name: path,
            contents: ExecContents::Host,
        }
    }

    /// `bytes`, served under `name`.
    pub(crate) fn bytes(name: String, bytes: Vec<u8>) -> ExecFile {
        ExecFile {
            name,
            contents: ExecContents::Bytes(bytes.into()),
        }
    }

    /// The contents, if `filename` names this file.
    pub(crate) fn open(&self, filename: &[u8]) -> Option<Arc<[u8]>> {
        if filename != self.name.as_bytes() {
            return None;
        }
        match &self.contents {
            ExecContents::Bytes(bytes) => Some(Arc::clone(bytes)),
            ExecContents::Host => {
                use std::io::Read;
                let mut bytes = Vec::new();
                let read = open_regular(Path::new(&self.name))
                    .and_then(|mut f| f.read_to_end(&mut bytes).map_err(|e| e.to_string()));
                match read {
                    Ok(_) => Some(bytes.into()),
                    Err(why) => {
                        debug!("exec-file: {why}");
                        None
                    }
                }
            }
        }
    }
}

/// Files gdb may hold open at once.
pub(crate) const MAX_OPEN: usize = 16;

/// The files gdb has open, by descriptor.
#[derive(Debug, Default)]
pub(crate) struct OpenFiles(pub(crate) Vec<Option<Arc<[u8]>>>);

impl OpenFiles {
    /// The file open as `fd` (`EBADF`: none).
    pub(crate) fn get(&self, fd: u32) -> Result<&Arc<[u8]>, HostIoErrno> {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.0.get(i)?.as_ref())
            .ok_or(HostIoErrno::EBADF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_open() {
        let dir = std::env::temp_dir().join(format!("vmem-host-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, b"data").unwrap();
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success(), "mkfifo");

        assert!(open_regular(&file).is_ok());
        let refusals: Vec<String> = [
            &link,
            &fifo,
            &dir,
            Path::new("/dev/null"),
            &dir.join("none"),
        ]
        .iter()
        .map(|p| open_regular(p).unwrap_err())
        .collect();
        for (why, path) in refusals.iter().zip([&link, &fifo, &dir]) {
            assert!(why.starts_with(&path.display().to_string()), "{why}");
        }
        // Every refusal says the same after the path.
        let tails: Vec<&str> = refusals
            .iter()
            .map(|w| w.split_once(": ").unwrap().1)
            .collect();
        assert!(tails.windows(2).all(|w| w[0] == w[1]), "{tails:?}");

        let served = ExecFile::host(file.display().to_string());
        assert_eq!(
            served.open(file.to_str().unwrap().as_bytes()).as_deref(),
            Some(&b"data"[..])
        );
        assert_eq!(served.open(b"/etc/passwd"), None);
        let built = ExecFile::bytes("/symbols.elf".into(), b"ELF".to_vec());
        assert_eq!(built.open(b"/symbols.elf").as_deref(), Some(&b"ELF"[..]));
        assert_eq!(built.open(b"just probing"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

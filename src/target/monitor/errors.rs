//! How a monitor command fails: a usage error (its usage is shown) or one
//! line saying why.

/// Why a command did nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CmdError {
    /// The command line was wrong (missing or bad argument): its usage is
    /// shown.
    Usage(String),
    /// The command could not do it (memory not mapped, paging off …): one
    /// line.
    Failed(String),
}

/// A usage error.
pub(crate) fn usage(why: impl Into<String>) -> CmdError {
    CmdError::Usage(why.into())
}

impl From<String> for CmdError {
    fn from(why: String) -> Self {
        CmdError::Failed(why)
    }
}

impl From<&str> for CmdError {
    fn from(why: &str) -> Self {
        CmdError::Failed(why.to_string())
    }
}

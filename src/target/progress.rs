//! How far a long monitor command has got (a scan of all RAM, an audit of
//! many spaces), for a VMM or tool to show while it runs.

/// One report of progress: `done` of `total` units of `task`. The last
/// report of a task has `done == total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress<'a> {
    /// What is being done, e.g. "scanning RAM".
    pub task: &'a str,
    /// Units done so far.
    pub done: u64,
    /// Units in all.
    pub total: u64,
    /// What a unit is.
    pub unit: ProgressUnit,
}

/// What [`Progress`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProgressUnit {
    /// Bytes of guest RAM.
    Bytes,
    /// Address spaces.
    Spaces,
}

/// The callback a VMM gives [`crate::target::DebuggerBuilder::on_progress`].
pub(crate) type ProgressFn = dyn Fn(Progress<'_>) + Send + Sync;

/// The callback when none was given.
pub(crate) fn ignore(_: Progress<'_>) {}

//! What the [`Evaluator`](super::Evaluator) tells a progress display.

/// One progress event: `done` of `total` samples of the run `label` (`pgd eps 0.1`) are
/// finished; `done == 0` starts a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress<'a> {
    /// The run: the attack's name and ε, or `clean`.
    pub label: &'a str,
    /// Samples finished.
    pub done: usize,
    /// Samples in the run.
    pub total: usize,
}

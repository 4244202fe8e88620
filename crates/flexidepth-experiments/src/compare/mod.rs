//! `flexidepth compare` (issue 11, item 3): the FlexiDepth paper's method comparison on any model — full depth,
//! FlexiDepth (threshold tuned to the budget), LayerSkip-style early exit, ShortGPT, LaCo and MindSkip at "skip k
//! layers" budgets — as a retain-% table beside the paper's. [`grid`] holds the budgets, cells and the resumable
//! output folder, [`retain`] the retain rule and the paper's table, [`report`] the markdown, JSON and figure.

pub mod grid;
pub mod report;
pub mod retain;

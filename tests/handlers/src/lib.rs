//! Handlers of the `t-audit` endpoint, in a module of a crate of their own, as a team splits
//! its handlers out of the binary. The discovery tests depend on this crate without naming
//! anything in it, to show what happens when it is not linked and how to link it.

mod audit;

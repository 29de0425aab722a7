//! # flotilla-pd: the placement driver's durable model and brains
//!
//! No networking here (`docs/placement-driver.md`, step 3 to 5):
//!
//! - [`model`]: the durable records ([`StoreRecord`], [`RegionRecord`]) and the
//!   scheduling configuration ([`PdConfig`]).
//! - [`operator`]: [`Operator`]s and their [`Step`]s, what the planners decide.
//! - [`command`]: [`PdCommand`], the meta group's log entries, and [`PdOutput`], in a
//!   bounded binary format.
//! - [`state`]: [`PdState`], the deterministic apply rules and the snapshot format.
//! - [`machine`]: [`PdStateMachine`], the meta group's `flotilla_node::StateMachine`
//!   (group 0), and [`PdHandle`], its read side.
//! - [`planner`]: pure functions from a [`planner::ClusterView`] to operators: the replica
//!   checker, then balance; and the safety check the executor repeats before every step.
//! - [`limits`] and [`PdError`].

#![deny(missing_docs)]

pub mod command;
pub mod error;
pub mod limits;
pub mod machine;
pub mod model;
pub mod operator;
pub mod planner;
pub mod state;

pub use command::{PdCommand, PdOutput};
pub use error::PdError;
pub use flotilla_node::StoreId;
pub use machine::{PdHandle, PdStateMachine};
pub use model::{
    format_duration, parse_duration, ConfigSource, PdConfig, RegionRecord, StoreMark, StoreRecord,
};
pub use operator::{FinishedOperator, Operator, OperatorKind, Outcome, Step};
pub use planner::{
    has_quorum, plan, plan_merge, plan_repairs, plan_repairs_and_leaders, state_of, step_is_safe,
    store_state, ClusterView, RegionView, StoreState, StoreView,
};
pub use state::PdState;

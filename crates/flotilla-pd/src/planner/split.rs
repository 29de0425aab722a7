//! The split checker: a region grown past `region-split-bytes` or `region-split-keys` is
//! split in two at its middle key by size, by its leader, through its log; a region
//! written faster than `region-split-load` for a while (`hot`: the caller decides) is split at
//! the key that divides its writes.
//!
//! Owns: when a region is big or hot enough to split. Must never: split the meta group, or
//! a region that may not be touched (no leader, joint, no quorum: `may_touch`).

use crate::operator::{Operator, OperatorKind, Step};
use crate::planner::view::{ClusterView, RegionView};

/// The split operator `region` needs, if it passed a threshold. Sizes are the leader's
/// last measure; a region measured at 0 (never measured yet) is left alone. Size comes
/// before load: a region both too big and hot is halved by size.
pub(crate) fn check_region(view: &ClusterView, region: &RegionView) -> Option<Operator> {
    let config = &view.config;
    let record = &region.record;
    let leader = region.leader?;
    if record.id == 0 {
        return None;
    }
    let too_big = region.approximate_bytes >= config.region_split_bytes
        || region.approximate_keys >= config.region_split_keys;
    // A single key cannot be split: a region needs two keys for a middle one.
    if too_big && region.approximate_keys >= 2 {
        return Some(Operator::planned(
            record,
            OperatorKind::SplitRegion,
            vec![Step::Split(leader)],
        ));
    }
    (config.region_split_load > 0 && region.hot).then(|| {
        Operator::planned(
            record,
            OperatorKind::SplitHotRegion,
            vec![Step::SplitByLoad(leader)],
        )
    })
}

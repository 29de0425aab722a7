//! The placement driver's metrics, in the store's `GET /metrics`: whether this store is
//! the PD, and on the PD leader the stores by state, the regions by health, and the
//! operators started and finished by kind and outcome (counted by this process since it
//! started; a new leader's counters start where its process's left off).
//!
//! Owns: the metric names and labels (Prometheus text format). Must never: take a lock
//! the scheduler holds across an await (it reads copies).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use flotilla_pd::StoreState;

use super::super::{lock, Store};
use super::leader::state_name;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

impl Store {
    /// The PD's metrics (see the module docs).
    pub(crate) fn pd_metrics_text(&self) -> String {
        let mut out = String::new();
        let leading = self.is_pd_leader();
        family(
            &mut out,
            "flotilla_pd_is_leader",
            "gauge",
            "1 if this store leads the meta group (it is the placement driver).",
        );
        let _ = writeln!(out, "flotilla_pd_is_leader {}", u8::from(leading));
        let counts = {
            let counts = lock(&self.inner.pd.counts);
            (counts.started.clone(), counts.finished.clone())
        };
        family(
            &mut out,
            "flotilla_pd_operators_started_total",
            "counter",
            "Operators this process started as placement driver, by kind.",
        );
        for (kind, n) in &counts.0 {
            let _ = writeln!(
                out,
                "flotilla_pd_operators_started_total{{kind=\"{kind}\"}} {n}"
            );
        }
        family(
            &mut out,
            "flotilla_pd_operators_finished_total",
            "counter",
            "Operators this process finished as placement driver, by kind and outcome \
             (done, cancelled, timed_out).",
        );
        for ((kind, outcome), n) in &counts.1 {
            let _ = writeln!(
                out,
                "flotilla_pd_operators_finished_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let Some(meta) = self.meta_peer().filter(|_| leading) else {
            return out;
        };
        let state = meta.handle.state();
        let view = {
            let soft = lock(&self.inner.pd.leader);
            self.cluster_view(&state, &soft)
        };
        family(
            &mut out,
            "flotilla_pd_stores",
            "gauge",
            "Stores the placement driver knows, by state.",
        );
        for s in [
            StoreState::Up,
            StoreState::Disconnected,
            StoreState::Down,
            StoreState::Offline,
            StoreState::Tombstone,
        ] {
            let n = view.stores.iter().filter(|v| v.state == s).count();
            let _ = writeln!(out, "flotilla_pd_stores{{state=\"{}\"}} {n}", state_name(s));
        }
        let max = state.config.max_replicas as usize;
        let mut health: BTreeMap<&str, usize> = BTreeMap::new();
        for region in &view.regions {
            let label = if !flotilla_pd::has_quorum(region, &view.stores) {
                "no_quorum"
            } else if region.leader.is_none() {
                "no_leader"
            } else if region.record.voters.len() < max {
                "missing_replica"
            } else if region.record.voters.len() > max {
                "extra_replica"
            } else {
                "healthy"
            };
            *health.entry(label).or_default() += 1;
        }
        family(
            &mut out,
            "flotilla_pd_regions",
            "gauge",
            "Regions (the meta group included) by health as the placement driver sees them: \
             healthy, missing_replica, extra_replica, no_leader, no_quorum.",
        );
        for label in [
            "healthy",
            "missing_replica",
            "extra_replica",
            "no_leader",
            "no_quorum",
        ] {
            let n = health.get(label).copied().unwrap_or(0);
            let _ = writeln!(out, "flotilla_pd_regions{{health=\"{label}\"}} {n}");
        }
        family(
            &mut out,
            "flotilla_pd_operators_in_flight",
            "gauge",
            "Operators recorded in the meta group and not finished.",
        );
        let _ = writeln!(
            out,
            "flotilla_pd_operators_in_flight {}",
            state.operators.len()
        );
        out
    }
}

//! The scheduler's settings: which scores count and how much, how many
//! nodes to look at per pod, batching and back-off. Read from a YAML or
//! JSON file (`--scheduler-config`); every field is optional and an unknown
//! one is an error.

use std::path::Path;
use std::time::Duration;

use berth_retry::Backoff;
use serde::Deserialize;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum Strategy {
    /// Prefer the emptiest node: spreads load (the default, as in
    /// Kubernetes).
    #[default]
    LeastAllocated,
    /// Prefer the fullest node that fits: packs pods onto fewer nodes.
    MostAllocated,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Weights {
    /// Least- or most-allocated, per `scoringStrategy`.
    pub resources: u32,
    /// Keep cpu and memory use in proportion on each node.
    pub balanced: u32,
    /// Spread a workload's pods across nodes.
    pub node_spread: u32,
    /// Spread a workload's pods across zones (`topology.kubernetes.io/zone`).
    pub zone_spread: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            resources: 1,
            balanced: 1,
            node_spread: 2,
            zone_spread: 2,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct SchedulerConfig {
    pub scoring_strategy: Strategy,
    pub weights: Weights,
    /// Stop filtering once this share of the nodes was found feasible and
    /// score only those (at least 100 nodes). 0: adaptive as in
    /// Kubernetes, 50% less 1% per 125 nodes, at least 5%.
    pub percentage_of_nodes_to_score: u32,
    /// Most binds sent in one call (one batch of Raft entries).
    pub batch_size: usize,
    /// Batches in flight at once.
    pub max_in_flight_batches: usize,
    /// A pod that could not be placed waits this long before its next try,
    /// doubling per failure up to `maxBackoffMillis`; any change in the
    /// cluster (a node added, a pod gone) moves it up sooner.
    pub initial_backoff_millis: u64,
    pub max_backoff_millis: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            scoring_strategy: Strategy::default(),
            weights: Weights::default(),
            percentage_of_nodes_to_score: 0,
            batch_size: 1_000,
            max_in_flight_batches: 4,
            initial_backoff_millis: 1_000,
            max_backoff_millis: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read scheduler config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("scheduler config {path} is invalid: {message}; see the fields of SchedulerConfig in the scheduler docs")]
    Invalid { path: String, message: String },
}

impl SchedulerConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let config: Self = serde_yaml_ng::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        config.check().map_err(|message| ConfigError::Invalid {
            path: shown,
            message,
        })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if self.percentage_of_nodes_to_score > 100 {
            return Err("percentageOfNodesToScore must be 0 to 100".into());
        }
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return Err("batchSize must be 1 to 10000".into());
        }
        if self.max_in_flight_batches == 0 {
            return Err("maxInFlightBatches must be at least 1".into());
        }
        if self.initial_backoff_millis == 0 || self.max_backoff_millis < self.initial_backoff_millis
        {
            return Err("backoffs must be positive, the maximum at least the initial".into());
        }
        Ok(())
    }

    /// How many feasible nodes to find before scoring, of `nodes`.
    pub fn nodes_to_find(&self, nodes: usize) -> usize {
        const MIN: usize = 100;
        if nodes <= MIN {
            return nodes;
        }
        let pct = match self.percentage_of_nodes_to_score {
            0 => (50 - (nodes / 125).min(45) as i64).max(5) as usize,
            p => p as usize,
        };
        (nodes * pct / 100).max(MIN)
    }

    /// An unschedulable pod's wait before its next try.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.initial_backoff_millis),
            Duration::from_millis(self.max_backoff_millis),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_share_of_nodes_as_in_kubernetes() {
        let c = SchedulerConfig::default();
        assert_eq!(c.nodes_to_find(50), 50);
        assert_eq!(c.nodes_to_find(500), 230); // 46%
        assert_eq!(c.nodes_to_find(5_000), 500); // 10%
        assert_eq!(c.nodes_to_find(50_000), 2_500); // 5% floor
        let fixed = SchedulerConfig {
            percentage_of_nodes_to_score: 100,
            ..Default::default()
        };
        assert_eq!(fixed.nodes_to_find(5_000), 5_000);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let dir = std::env::temp_dir().join(format!("berth-sched-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.yaml");
        std::fs::write(
            &path,
            "scoringStrategy: MostAllocated\nweights: {nodeSpread: 5}\n",
        )
        .unwrap();
        let c = SchedulerConfig::load(&path).unwrap();
        assert_eq!(c.scoring_strategy, Strategy::MostAllocated);
        assert_eq!((c.weights.node_spread, c.weights.balanced), (5, 1));
        std::fs::write(&path, "weight: {}\n").unwrap();
        let e = SchedulerConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("unknown field `weight`"), "{e}");
        std::fs::write(&path, "batchSize: 0\n").unwrap();
        let e = SchedulerConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("batchSize"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

//! The tuning cache: a JSON file ([`DeviceCache`]) of what was measured of every launch
//! timed so far, per device; a launch is its op entry, element type and exact shape. An
//! entry that names a configuration this build or adapter does not have is ignored with a
//! warning and retuned, never trusted. Format 2: each candidate's output is compared with
//! the launch's baseline before it is timed (format 1 timed candidates on zeros, unchecked).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::device_cache::{default_dir, Record};
pub use crate::device_cache::{device_key, DeviceCache};

/// What was measured of one launch's candidates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CachedChoice {
    /// The configuration the others were compared with: the launch's default, or what
    /// replaced it where the default failed its self-check. An entry of another baseline is
    /// stale.
    pub baseline: String,
    /// Median microseconds of every candidate measured so far whose output agreed with the
    /// baseline's (the baseline's included): a run whose budget ran out leaves the rest to
    /// the next.
    #[serde(default)]
    pub measured: BTreeMap<String, f64>,
    /// Those whose output was the baseline's bit for bit (`--tune exact` picks among them).
    #[serde(default)]
    pub identical: BTreeSet<String>,
    /// Candidates never to pick, and why: output that disagreed with the baseline's, a
    /// failed self-check, or a launch that could not be built.
    #[serde(default)]
    pub rejected: BTreeMap<String, String>,
}

impl CachedChoice {
    /// A new entry compared with `baseline`.
    pub fn new(baseline: &str) -> CachedChoice {
        CachedChoice {
            baseline: baseline.to_string(),
            ..CachedChoice::default()
        }
    }

    /// Whether candidate `name` has been dealt with: measured or rejected.
    pub fn settled(&self, name: &str) -> bool {
        self.measured.contains_key(name) || self.rejected.contains_key(name)
    }
}

/// The tuning cache file's contents.
pub type TuneCache = DeviceCache<CachedChoice>;

impl Record for CachedChoice {
    const FORMAT: u32 = 2;
    const WHAT: &'static str = "tuning cache";
}

/// The default tuning cache: `tuning.json` in [`crate::device_cache::default_dir`].
pub fn default_path() -> Option<PathBuf> {
    default_dir().map(|d| d.join("tuning.json"))
}

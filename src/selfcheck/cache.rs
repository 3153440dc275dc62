//! The self-check's verdicts, per device and item, so that a device is checked once per
//! driver and release: `selfcheck.json` beside the tuning cache ([`DeviceCache`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Checked;
use crate::device_cache::{DeviceCache, Record};

/// What the check of one item found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub passed: bool,
    /// The largest relative error; `None` for a NaN or an item that did not run.
    pub max_rel_err: Option<f64>,
    /// What failed, for the warning a later run repeats.
    #[serde(default)]
    pub failures: String,
}

impl Record for Verdict {
    const FORMAT: u32 = 1;
    const WHAT: &'static str = "self-check cache";
}

/// The cache file's contents.
pub type CheckCache = DeviceCache<Verdict>;

impl From<&Checked> for Verdict {
    fn from(c: &Checked) -> Verdict {
        let e = c.max_rel_err();
        Verdict {
            passed: c.passed(),
            max_rel_err: (c.error.is_none() && e.is_finite()).then_some(e),
            failures: match c.passed() {
                true => String::new(),
                false => c.failures(),
            },
        }
    }
}

/// The self-check cache beside the tuning cache `tune_cache`: `selfcheck.json` in its
/// folder.
pub fn path_beside(tune_cache: &Path) -> PathBuf {
    tune_cache.with_file_name("selfcheck.json")
}

//! The tuning cache: a JSON file of the fastest configuration of every launch timed so far,
//! per device. A device is its adapter name, vendor and device ids, driver, backend and our
//! crate version (a new driver or release retunes); a launch is its op entry, element type
//! and exact shape. Read leniently: a file that does not parse, or an entry that names a
//! configuration this build or adapter does not have, is ignored with a warning and retuned,
//! never trusted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::gpu::Gpu;

/// Bumped when the file's meaning changes; other versions are ignored.
const FORMAT: u32 = 1;

/// What was measured for one launch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CachedChoice {
    /// The fastest configuration's name (`tile16`, `wgtile@more-splits`, ...).
    pub config: String,
    /// Its median time, and the default configuration's, in microseconds.
    pub micros: f64,
    pub default_micros: f64,
    /// Every candidate measured so far (name -> microseconds): a run whose budget ran out
    /// leaves the rest to the next.
    #[serde(default)]
    pub measured: BTreeMap<String, f64>,
    /// Whether every candidate was measured; until then later runs go on timing.
    #[serde(default)]
    pub complete: bool,
}

/// The cache file's contents.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TuneCache {
    pub format: u32,
    /// Device key -> launch key -> choice.
    pub devices: BTreeMap<String, BTreeMap<String, CachedChoice>>,
}

/// The default cache file: `densenet-wgpu/tuning.json` in the platform's cache folder
/// (`$XDG_CACHE_HOME` or `~/.cache` on Linux, `~/Library/Caches` on macOS, `%LOCALAPPDATA%`
/// on Windows); `None` where the platform has none.
pub fn default_path() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("densenet-wgpu").join("tuning.json"))
}

/// The key of `gpu` in the cache: what a tuned choice depends on besides the launch.
pub fn device_key(gpu: &Gpu) -> String {
    let i = &gpu.info;
    format!(
        "{} | {:04x}:{:04x} | {} {} | {:?} | densenet-wgpu {}",
        i.name,
        i.vendor,
        i.device,
        i.driver,
        i.driver_info,
        i.backend,
        env!("CARGO_PKG_VERSION")
    )
}

impl TuneCache {
    /// Reads `path`. A missing file is an empty cache; one that cannot be read or parsed, or
    /// of another format, is an empty cache and a warning.
    pub fn load(path: &Path) -> (TuneCache, Option<String>) {
        let empty = TuneCache {
            format: FORMAT,
            ..Default::default()
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (empty, None),
            Err(e) => return (empty, Some(format!("cannot read {}: {e}", path.display()))),
        };
        match serde_json::from_str::<TuneCache>(&text) {
            Ok(c) if c.format == FORMAT => (c, None),
            Ok(c) => (
                empty,
                Some(format!(
                    "{} has format {} (this build reads {FORMAT})",
                    path.display(),
                    c.format
                )),
            ),
            Err(e) => (empty, Some(format!("{} is corrupt ({e})", path.display()))),
        }
    }

    /// The choices recorded for `device`.
    pub fn device(&self, device: &str) -> Option<&BTreeMap<String, CachedChoice>> {
        self.devices.get(device)
    }

    /// Merges `new` choices for `device` into the file at `path` (re-read first, so runs
    /// that tuned other launches meanwhile keep theirs), written through a temporary file.
    pub fn store(path: &Path, device: &str, new: &BTreeMap<String, CachedChoice>) -> Result<()> {
        let (mut cache, _) = TuneCache::load(path);
        let entries = cache.devices.entry(device.to_string()).or_default();
        entries.extend(new.iter().map(|(k, v)| (k.clone(), v.clone())));
        let text = serde_json::to_string_pretty(&cache)?;
        crate::atomic_file::write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing the tuning cache {}", path.display()))
    }
}

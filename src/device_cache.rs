//! Per-device JSON caches: what the tuner measured and what the self-check found, keyed by
//! device (adapter name, vendor and device ids, driver, backend, crate version: a new driver
//! or release starts afresh) and then by the record's own key. Read leniently: a file that
//! does not parse or has another format is an empty cache and a warning, never trusted.
//! Writes merge with what other runs wrote meanwhile, through a temporary file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::gpu::Gpu;

/// What a cache holds per key.
pub trait Record: Clone + Serialize + DeserializeOwned {
    /// Bumped when the records' meaning changes; files of another format are ignored.
    const FORMAT: u32;
    /// What the file is, for messages ("tuning cache").
    const WHAT: &'static str;
}

/// A cache file's contents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "T: Record")]
pub struct DeviceCache<T> {
    pub format: u32,
    /// Device key -> record key -> record.
    pub devices: BTreeMap<String, BTreeMap<String, T>>,
}

/// The default folder of the caches: `densenet-wgpu` in the platform's cache folder
/// (`$XDG_CACHE_HOME` or `~/.cache` on Linux, `~/Library/Caches` on macOS, `%LOCALAPPDATA%`
/// on Windows); `None` where the platform has none.
pub fn default_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("densenet-wgpu"))
}

/// The key of `gpu` in every cache: what a measurement or a verdict depends on besides the
/// kernel and its shape.
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

impl<T: Record> DeviceCache<T> {
    fn empty() -> DeviceCache<T> {
        DeviceCache {
            format: T::FORMAT,
            devices: BTreeMap::new(),
        }
    }

    /// Reads `path`. A missing file is an empty cache; one that cannot be read or parsed, or
    /// of another format, is an empty cache and a warning.
    pub fn load(path: &Path) -> (DeviceCache<T>, Option<String>) {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Self::empty(), None),
            Err(e) => {
                let why = format!("cannot read the {} {}: {e}", T::WHAT, path.display());
                return (Self::empty(), Some(why));
            }
        };
        // The format first: a file of another format may not parse as this one.
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        let what = format!("the {} {}", T::WHAT, path.display());
        match serde_json::from_str::<Format>(&text) {
            Ok(f) if f.format != T::FORMAT => {
                let why = format!(
                    "{what} has format {} (this build reads {})",
                    f.format,
                    T::FORMAT
                );
                return (Self::empty(), Some(why));
            }
            Err(e) => return (Self::empty(), Some(format!("{what} is corrupt ({e})"))),
            Ok(_) => {}
        }
        match serde_json::from_str::<DeviceCache<T>>(&text) {
            Ok(c) => (c, None),
            Err(e) => (Self::empty(), Some(format!("{what} is corrupt ({e})"))),
        }
    }

    /// The records of `device`.
    pub fn device(&self, device: &str) -> Option<&BTreeMap<String, T>> {
        self.devices.get(device)
    }

    /// Merges `new` records of `device` into the file at `path` (re-read first, so runs
    /// that wrote other records meanwhile keep theirs), written through a temporary file.
    pub fn store(path: &Path, device: &str, new: &BTreeMap<String, T>) -> Result<()> {
        let (mut cache, _) = Self::load(path);
        let records = cache.devices.entry(device.to_string()).or_default();
        records.extend(new.iter().map(|(k, v)| (k.clone(), v.clone())));
        let text = serde_json::to_string_pretty(&cache)?;
        crate::atomic_file::write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing the {} {}", T::WHAT, path.display()))
    }
}

//! Fault injection, for tests only: `DENSENET_FAULT=conv2d=tile8,batchnorm=split` makes every
//! launch of those configurations (an op and a configuration name as `--kernels` writes them:
//! `tile8` matches every split setting of tile8, `tile8@more-splits` only that one) add 1 to
//! the first element of its output, as a miscompiled kernel would get it wrong. The
//! self-check and the tuner's comparison must catch it; the tests set it, nothing else does.

use std::sync::OnceLock;

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{DType, View};
use crate::kernels::{write, Config, Dispatch, Entry, Grid, Kernels, Shader, Source, PLAIN};

/// The environment variable that names the faulty configurations.
pub const ENV: &str = "DENSENET_FAULT";

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct FaultParams {
    pub offset: u32,
    pub _pad: [u32; 3],
}

pub static SHADER: Shader = Shader {
    op: "fault",
    file: "fault.wgsl",
    source: Source::File(include_str!("../../shaders/fault.wgsl")),
    entries: &[&PERTURB],
    variants: &[PLAIN],
    choice: "one variant (tests only)",
    dtypes: &[DType::F32, DType::F16],
};

pub static PERTURB: Entry = Entry::new::<FaultParams>(&SHADER, "fault_perturb", &[write(1)], 1);

/// The (op, configuration) pairs `DENSENET_FAULT` names, read once.
fn faulty() -> &'static [(String, String)] {
    static FAULTY: OnceLock<Vec<(String, String)>> = OnceLock::new();
    FAULTY.get_or_init(|| {
        let spec = std::env::var(ENV).unwrap_or_default();
        spec.split(',')
            .filter_map(|item| item.split_once('='))
            .map(|(op, c)| (op.trim().to_string(), c.trim().to_string()))
            .collect()
    })
}

/// Whether `DENSENET_FAULT` names `config` of `op`.
pub fn is_faulty(op: &str, config: Config) -> bool {
    let name = config.name();
    faulty()
        .iter()
        .any(|(o, c)| o == op && (*c == name || *c == config.variant.name))
}

/// The dispatch that spoils element `at` of `output` (a view as its kernel binds it) when `DENSENET_FAULT` names `config` of
/// `op`; `None` otherwise (always, outside the tests).
pub fn after(
    k: &Kernels,
    op: &str,
    config: Config,
    output: View<'_>,
    at: u64,
) -> Result<Option<Dispatch>> {
    if !is_faulty(op, config) {
        return Ok(None);
    }
    let p = FaultParams {
        offset: at as u32,
        _pad: [0; 3],
    };
    let d = k.dispatch(
        PERTURB.kernel(output.dtype),
        &p,
        &[(1, output)],
        Grid::Threads(1),
    )?;
    Ok(Some(d))
}

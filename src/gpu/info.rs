//! The report printed by `densenet-wgpu info`: every adapter, the chosen one and why, and
//! the features and limits that matter to the kernels.

use std::fmt::Write;

use super::context::{ranked_adapters, resolve_backends, Gpu, GpuOptions};
use crate::error::Result;

fn describe(info: &wgpu::AdapterInfo) -> String {
    let driver = match (info.driver.is_empty(), info.driver_info.is_empty()) {
        (true, true) => "driver unknown".to_string(),
        (false, true) => info.driver.clone(),
        (true, false) => info.driver_info.clone(),
        (false, false) => format!("{} {}", info.driver, info.driver_info),
    };
    format!(
        "{} ({:?}, {:?}, {driver})",
        info.name, info.backend, info.device_type
    )
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Lists the adapters, then opens the chosen one and describes it.
pub fn report(opts: &GpuOptions) -> Result<String> {
    let mut out = String::new();
    let backends = resolve_backends(opts.backends);
    let (_instance, adapters) = ranked_adapters(backends);
    let _ = writeln!(out, "adapters ({backends:?}), best first:");
    for (i, a) in adapters.iter().enumerate() {
        let _ = writeln!(out, "  [{i}] {}", describe(&a.get_info()));
    }
    let coop = adapters
        .iter()
        .map(|a| (a.get_info().name, a.cooperative_matrix_properties()))
        .collect::<Vec<_>>();
    drop(adapters);

    let gpu = Gpu::new(opts)?;
    let f = gpu.features;
    let l = &gpu.limits;
    let _ = writeln!(out, "chosen: {}", describe(&gpu.info));
    let _ = writeln!(out, "  why: {}", gpu.reason);
    let _ = writeln!(out, "features:");
    let _ = writeln!(
        out,
        "  f16 (SHADER_F16): {}",
        yes(f.contains(wgpu::Features::SHADER_F16))
    );
    let _ = writeln!(
        out,
        "  subgroups: {} (size {}..{})",
        yes(f.contains(wgpu::Features::SUBGROUP)),
        gpu.info.subgroup_min_size,
        gpu.info.subgroup_max_size
    );
    let _ = writeln!(
        out,
        "  timestamp queries: {} (inside encoders: {})",
        yes(f.contains(wgpu::Features::TIMESTAMP_QUERY)),
        yes(f.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS))
    );
    let configs = coop
        .iter()
        .find(|(name, _)| *name == gpu.info.name)
        .map(|(_, c)| c.as_slice())
        .unwrap_or(&[]);
    let usable = match gpu.coop.is_empty() {
        true => "none usable: the conv2d coop variants need f16 x f16 -> f32".to_string(),
        false => {
            let shapes: Vec<String> = gpu.coop.iter().map(|s| s.to_string()).collect();
            format!("enabled; f16 x f16 -> f32 {}", shapes.join(", "))
        }
    };
    match configs.is_empty() {
        true => {
            let _ = writeln!(out, "  cooperative matrix: no");
        }
        false => {
            let _ = writeln!(out, "  cooperative matrix: yes ({usable})");
        }
    }
    for c in configs {
        let _ = writeln!(
            out,
            "    {}x{}x{} {:?} inputs, {:?} accumulators",
            c.m_size, c.n_size, c.k_size, c.ab_type, c.cr_type
        );
    }
    limits(&mut out, l);
    Ok(out)
}

/// The limits that matter to the kernels and the plan.
fn limits(out: &mut String, l: &wgpu::Limits) {
    let _ = writeln!(out, "limits:");
    let rows: [(&str, u64); 9] = [
        ("max_buffer_size", l.max_buffer_size),
        (
            "max_storage_buffer_binding_size",
            l.max_storage_buffer_binding_size,
        ),
        (
            "max_storage_buffers_per_shader_stage",
            l.max_storage_buffers_per_shader_stage as u64,
        ),
        (
            "max_compute_workgroup_storage_size",
            l.max_compute_workgroup_storage_size as u64,
        ),
        (
            "max_compute_invocations_per_workgroup",
            l.max_compute_invocations_per_workgroup as u64,
        ),
        (
            "max_compute_workgroups_per_dimension",
            l.max_compute_workgroups_per_dimension as u64,
        ),
        (
            "min_storage_buffer_offset_alignment",
            l.min_storage_buffer_offset_alignment as u64,
        ),
        (
            "min_uniform_buffer_offset_alignment",
            l.min_uniform_buffer_offset_alignment as u64,
        ),
        ("max_bind_groups", l.max_bind_groups as u64),
    ];
    for (name, v) in rows {
        let _ = writeln!(out, "  {name}: {v}");
    }
}

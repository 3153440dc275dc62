//! The kernel registry without a GPU: every shader of every op, in every variant and element
//! type, parsed and validated by naga; every entry point's Rust declaration (bindings,
//! access, element kind, workgroup size, params size) checked against the WGSL; every WGSL
//! file in shaders/ registered by an op; and the crate's modules importing each other in
//! one direction only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use densenet_wgpu::gpu::DType;
use densenet_wgpu::kernels::{Access, Elem, Shader};
use densenet_wgpu::ops::SHADERS;
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn parse(what: &str, source: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(source)));
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(source)));
    (module, info)
}

/// Every (shader, variant, dtype) source, validated.
fn each_source(
    mut f: impl FnMut(&'static Shader, DType, String, &naga::Module, &naga::valid::ModuleInfo),
) {
    for shader in SHADERS {
        for v in shader.variants {
            for &d in shader.dtypes {
                let what = format!("{}[{},{}]", shader.file, v.name, d);
                let (module, info) = parse(&what, &shader.full_source(v, d));
                f(shader, d, what, &module, &info);
            }
        }
    }
}

/// Every kernel validates and goes through naga's SPIR-V writer with the options of wgpu's
/// Vulkan backend: the writer can fail (or, in naga 30, panic: a coopLoad pointer indexed by
/// an inline expression was seen to) where validation passes.
#[test]
fn every_kernel_validates_and_writes_spirv() {
    let mut count = 0;
    each_source(|_, _, what, module, info| {
        // wgpu's Vulkan backend writes with bounds checks and SPIR-V 1.6 on Vulkan 1.3.
        use naga::proc::{BoundsCheckPolicies, BoundsCheckPolicy::Restrict};
        let options = naga::back::spv::Options {
            lang_version: (1, 6),
            bounds_check_policies: BoundsCheckPolicies {
                index: Restrict,
                buffer: Restrict,
                image_load: Restrict,
                binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
            },
            ..Default::default()
        };
        let words =
            std::panic::catch_unwind(|| naga::back::spv::write_vec(module, info, &options, None));
        match words {
            Ok(Ok(words)) => assert!(words.len() > 5, "{what}: empty SPIR-V"),
            Ok(Err(e)) => panic!("{what}: SPIR-V: {e}"),
            Err(_) => panic!("{what}: naga's SPIR-V writer panicked"),
        }
        count += 1;
    });
    assert!(count > SHADERS.len(), "conv2d has more than one variant");
}

/// The cooperative-matrix convolution is generated for each fragment shape an adapter may
/// report (8x8x8 on Mesa's lavapipe, 16x16x16 on NVIDIA); both validate (above) without a
/// GPU, and each uses its own shape only.
#[test]
fn coop_variants_use_their_fragment_shape() {
    let shader = SHADERS
        .iter()
        .find(|s| s.file == "conv2d_tiled.wgsl")
        .unwrap();
    for (name, mine, other) in [
        ("coop8", "coop_mat8x8", "coop_mat16x16"),
        ("coop16", "coop_mat16x16", "coop_mat8x8"),
    ] {
        let v = shader.find_variant(name).unwrap();
        let source = shader.full_source(v, DType::F32);
        assert!(source.starts_with("enable f16;"), "{name}: enables first");
        assert!(source.contains(&format!("{mine}<f16, A>")), "{name}");
        assert!(source.contains(&format!("{mine}<f32, C>")), "{name}");
        assert!(!source.contains(other), "{name}");
    }
    let plain = shader.find_variant("wgtile").unwrap();
    let source = shader.full_source(plain, DType::F32);
    assert!(
        !source.contains("coop_mat") && !source.contains("enable f16"),
        "wgtile stays f32"
    );
}

#[test]
fn declarations_match_the_wgsl() {
    each_source(|shader, dtype, what, module, info| {
        let names: Vec<&str> = module
            .entry_points
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        for ep in &names {
            assert!(
                shader.entries.iter().any(|e| e.name == *ep),
                "{what}: entry point {ep} is not declared in Rust"
            );
        }
        for entry in shader.entries {
            assert!(
                std::ptr::eq(entry.shader, shader),
                "{}: its shader",
                entry.name
            );
            let idx = names
                .iter()
                .position(|n| *n == entry.name)
                .unwrap_or_else(|| panic!("{what}: no entry point {}", entry.name));
            let ep = &module.entry_points[idx];
            assert_eq!(
                ep.workgroup_size,
                [entry.workgroup_size, 1, 1],
                "{}",
                entry.name
            );
            let uses = info.get_entry_point(idx);
            let (storage, uniform) = bindings(module, uses, entry.name, dtype);
            let declared: Vec<(u32, Access, Elem)> = entry
                .bindings
                .iter()
                .map(|b| (b.index, b.access, seen_as(b.elem, dtype)))
                .collect();
            assert_eq!(storage, declared, "{what} {}: storage bindings", entry.name);
            assert_eq!(
                uniform,
                Some(entry.params_size as u32),
                "{what} {}: params uniform size vs the Rust params struct",
                entry.name
            );
        }
    });
}

/// The storage bindings an entry point uses (index, access, element kind), sorted, and the
/// size of its uniform.
fn bindings(
    module: &naga::Module,
    uses: &naga::valid::FunctionInfo,
    name: &str,
    dtype: DType,
) -> (Vec<(u32, Access, Elem)>, Option<u32>) {
    let mut storage = Vec::new();
    let mut uniform = None;
    for (handle, var) in module.global_variables.iter() {
        let Some(binding) = (!uses[handle].is_empty())
            .then_some(var.binding.as_ref())
            .flatten()
        else {
            continue;
        };
        assert_eq!(binding.group, 0, "{name}: bind group");
        match var.space {
            naga::AddressSpace::Uniform => {
                assert_eq!(binding.binding, 0, "{name}: uniform binding");
                uniform = Some(module.types[var.ty].inner.size(module.to_ctx()));
            }
            naga::AddressSpace::Storage { access } => {
                let a = match access.contains(naga::StorageAccess::STORE) {
                    true => Access::ReadWrite,
                    false => Access::Read,
                };
                storage.push((binding.binding, a, elem(module, var.ty, dtype)));
            }
            other => panic!("{name}: unexpected address space {other:?}"),
        }
    }
    storage.sort_by_key(|b| b.0);
    (storage, uniform)
}

/// What a declared binding kind looks like in the WGSL of a `dtype` kernel: in an f32
/// kernel `act` is f32, so the kernel's element type and f32 cannot be told apart there (the
/// f16 kernels tell them apart).
fn seen_as(elem: Elem, dtype: DType) -> Elem {
    match (elem, dtype) {
        (Elem::F32, DType::F32) => Elem::Float,
        (e, _) => e,
    }
}

/// The binding kind of an array's elements (vectors and atomics included) in a `dtype`
/// kernel: floats of the kernel's width are its element type, other floats f32.
fn elem(module: &naga::Module, ty: naga::Handle<naga::Type>, dtype: DType) -> Elem {
    let mut inner = &module.types[ty].inner;
    if let naga::TypeInner::Array { base, .. } = inner {
        inner = &module.types[*base].inner;
    }
    let scalar = match inner {
        naga::TypeInner::Scalar(s) | naga::TypeInner::Atomic(s) => *s,
        naga::TypeInner::Vector { scalar, .. } => *scalar,
        other => panic!("storage of {other:?}"),
    };
    match scalar.kind {
        naga::ScalarKind::Float if scalar.width as u64 == dtype.size() => Elem::Float,
        naga::ScalarKind::Float if scalar.width == 4 => Elem::F32,
        naga::ScalarKind::Uint => Elem::U32,
        k => panic!("storage of {k:?} {}", scalar.width),
    }
}

/// A WGSL file that no op registers would never be compiled or tested: it fails here.
#[test]
fn every_shader_file_is_registered() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl") && n != "common.wgsl")
        .collect();
    let registered: BTreeSet<String> = SHADERS.iter().map(|s| s.file.to_string()).collect();
    assert_eq!(
        on_disk, registered,
        "shaders/ and ops::SHADERS must list the same files"
    );
    // An op's shaders share one entry name per launcher, each at most once per shader.
    for s in SHADERS {
        let names: BTreeSet<&str> = s.entries.iter().map(|e| e.name).collect();
        assert_eq!(
            names.len(),
            s.entries.len(),
            "{}: entry names repeat",
            s.file
        );
    }
}

/// The top-level modules of src/ and the ones each refers to (`crate::name`).
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let mut text = String::new();
        collect_text(&path, &mut text);
        let deps = text
            .match_indices("crate::")
            .map(|(i, _)| {
                let rest = &text[i + 7..];
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                rest[..end].to_string()
            })
            .filter(|d| *d != name && !d.is_empty() && d != "error" && d != "ensure_shape")
            .collect();
        graph.insert(name, deps);
    }
    graph
}

fn collect_text(path: &Path, out: &mut String) {
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            collect_text(&e.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push_str(&std::fs::read_to_string(path).unwrap());
    }
}

/// gpu -> kernels -> ops -> model -> the tool: no module reaches up, and there is no cycle.
#[test]
fn modules_import_one_way() {
    let graph = module_graph();
    let below = |m: &str| -> &[&str] {
        match m {
            "gpu" => &[],
            "kernels" => &["gpu"],
            "ops" => &["gpu", "kernels"],
            "reference" => &["ops"],
            _ => &[],
        }
    };
    for layer in ["gpu", "kernels", "ops", "reference"] {
        let deps = &graph[layer];
        let extra: Vec<&String> = deps
            .iter()
            .filter(|d| !below(layer).contains(&d.as_str()))
            .collect();
        assert!(extra.is_empty(), "{layer} imports {extra:?}");
    }
    // No cycle anywhere: repeatedly remove modules with no remaining dependencies.
    let mut left = graph.clone();
    while !left.is_empty() {
        let free: Vec<String> = left
            .iter()
            .filter(|(_, d)| d.iter().all(|x| !left.contains_key(x)))
            .map(|(m, _)| m.clone())
            .collect();
        assert!(!free.is_empty(), "import cycle among {:?}", left.keys());
        for m in free {
            left.remove(&m);
        }
    }
}

/// The files of src/model/ and the sibling modules each refers to (`crate::model::x`,
/// `super::x`, `model::{x, ..}`).
fn model_graph() -> BTreeMap<String, BTreeSet<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/model");
    let names: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .filter(|n| n != "mod")
        .collect();
    let mut graph = BTreeMap::new();
    for name in &names {
        let text = std::fs::read_to_string(dir.join(format!("{name}.rs"))).unwrap();
        // The unit tests at the bottom may use anything.
        let code = text.split("#[cfg(test)]").next().unwrap();
        let mut deps: BTreeSet<String> = BTreeSet::new();
        for other in &names {
            let path_use = code.contains(&format!("crate::model::{other}::"))
                || code.contains(&format!("super::{other}::"))
                || code.contains(&format!("super::{other}}}"))
                || code.contains(&format!("super::{other},"));
            let grouped = code.match_indices("crate::model::{").any(|(i, _)| {
                code[i..]
                    .split('}')
                    .next()
                    .unwrap()
                    .contains(other.as_str())
            });
            if other != name && (path_use || grouped) {
                deps.insert(other.clone());
            }
        }
        graph.insert(name.clone(), deps);
    }
    graph
}

/// src/model/ reads bottom-up: no file imports one that imports it back, however far round.
#[test]
fn model_files_import_one_way() {
    let graph = model_graph();
    let mut left = graph.clone();
    let mut order = Vec::new();
    while !left.is_empty() {
        let free: Vec<String> = left
            .iter()
            .filter(|(_, d)| d.iter().all(|x| !left.contains_key(x)))
            .map(|(m, _)| m.clone())
            .collect();
        assert!(
            !free.is_empty(),
            "import cycle in src/model among {:?} (after {order:?})",
            left
        );
        for m in free {
            left.remove(&m);
            order.push(m);
        }
    }
    // The layers this refactor set: the commands below the plan; node types below the
    // builders that fill them; the builders below the graph that calls them.
    for (low, high) in [
        ("cmd", "plan"),
        ("nodes", "layers"),
        ("nodes", "stem"),
        ("layers", "graph"),
        ("graph", "buffers"),
        ("dispatches", "steps"),
    ] {
        assert!(
            graph[high].contains(low) && !graph[low].contains(high),
            "{high} should import {low}, not the other way: {graph:?}"
        );
    }
}

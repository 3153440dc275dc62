//! The kernel registry without a GPU: every shader of every op, in every variant and element
//! type, parsed and validated by naga; every entry point's Rust declaration (bindings,
//! access, element kind, workgroup size, params size) checked against the WGSL; every WGSL
//! file in shaders/ registered by an op; and the crate's modules importing each other in
//! one direction only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

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
    mut f: impl FnMut(&'static Shader, String, &naga::Module, &naga::valid::ModuleInfo),
) {
    for shader in SHADERS {
        for v in shader.variants {
            for &d in shader.dtypes {
                let what = format!("{}[{},{}]", shader.file, v.name, d);
                let (module, info) = parse(&what, &shader.full_source(v, d));
                f(shader, what, &module, &info);
            }
        }
    }
}

#[test]
fn every_kernel_validates() {
    let mut count = 0;
    each_source(|_, _, _, _| count += 1);
    assert!(count > SHADERS.len(), "conv2d has more than one variant");
}

#[test]
fn declarations_match_the_wgsl() {
    each_source(|shader, what, module, info| {
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
            let (storage, uniform) = bindings(module, info.get_entry_point(idx), entry.name);
            let declared: Vec<(u32, Access, Elem)> = entry
                .bindings
                .iter()
                .map(|b| (b.index, b.access, b.elem))
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
                storage.push((binding.binding, a, elem(module, var.ty)));
            }
            other => panic!("{name}: unexpected address space {other:?}"),
        }
    }
    storage.sort_by_key(|b| b.0);
    (storage, uniform)
}

/// Float or u32: the scalar kind of an array's elements (vectors and atomics included).
fn elem(module: &naga::Module, ty: naga::Handle<naga::Type>) -> Elem {
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
        naga::ScalarKind::Float => Elem::Float,
        naga::ScalarKind::Uint => Elem::U32,
        k => panic!("storage of {k:?}"),
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

//! Every shader parsed and validated by naga (no GPU needed), and every entry point's Rust
//! declaration (bindings, access, workgroup size, params size) checked against the WGSL.

use densenet_wgpu::kernels::{all_shaders, Access};
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn parse(file: &str, source: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(source)));
    let info = Validator::new(ValidationFlags::all(), Capabilities::default())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(source)));
    (module, info)
}

#[test]
fn every_shader_validates() {
    assert!(!all_shaders().is_empty());
    for shader in all_shaders() {
        parse(shader.file, &shader.full_source());
    }
}

#[test]
fn declarations_match_the_wgsl() {
    for shader in all_shaders() {
        let (module, info) = parse(shader.file, &shader.full_source());
        let names: Vec<&str> = module
            .entry_points
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        for ep in &names {
            assert!(
                shader.entries.iter().any(|e| e.name == *ep),
                "{}: entry point {ep} is not declared in Rust",
                shader.file
            );
        }
        for entry in shader.entries {
            let idx = names
                .iter()
                .position(|n| *n == entry.name)
                .unwrap_or_else(|| panic!("{}: no entry point {}", shader.file, entry.name));
            let ep = &module.entry_points[idx];
            assert_eq!(
                ep.workgroup_size,
                [entry.workgroup_size, 1, 1],
                "{}: workgroup size",
                entry.name
            );
            let uses = info.get_entry_point(idx);
            let mut storage = Vec::new();
            let mut uniform_size = None;
            for (handle, var) in module.global_variables.iter() {
                if uses[handle].is_empty() {
                    continue;
                }
                let Some(binding) = &var.binding else {
                    continue;
                };
                assert_eq!(binding.group, 0, "{}: bind group", entry.name);
                match var.space {
                    naga::AddressSpace::Uniform => {
                        assert_eq!(binding.binding, 0, "{}: uniform binding", entry.name);
                        uniform_size = Some(module.types[var.ty].inner.size(module.to_ctx()));
                    }
                    naga::AddressSpace::Storage { access } => {
                        let a = if access.contains(naga::StorageAccess::STORE) {
                            Access::ReadWrite
                        } else {
                            Access::Read
                        };
                        storage.push((binding.binding, a));
                    }
                    other => panic!("{}: unexpected address space {other:?}", entry.name),
                }
            }
            storage.sort_by_key(|b| b.0);
            assert_eq!(storage, entry.bindings, "{}: storage bindings", entry.name);
            assert_eq!(
                uniform_size,
                Some(entry.params_size as u32),
                "{}: params uniform size vs the Rust params struct",
                entry.name
            );
        }
    }
}

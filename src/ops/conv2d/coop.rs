//! The WGSL of the cooperative-matrix variants of the workgroup-tiled convolution
//! (conv2d_tiled.wgsl's `coopN`): the staged tiles in f16, each subgroup multiplying two
//! N x N fragments per step with f32 accumulators, the fragments stored to a workgroup tile
//! at the end for the shared epilogue.
//!
//! The fragment layout depends on the subgroup size: a 32 x 64 tile holds 2048 / N^2
//! fragments, two per subgroup, so a 128-invocation workgroup needs subgroups of N^2 / 8
//! invocations (8 for 8x8x8, as on Mesa's lavapipe; 32 for 16x16x16, as on NVIDIA). The
//! variant's [`Needs`](crate::kernels::Needs) says so and the registry checks it.
//!
//! naga 30 writes SPIR-V that panics when the pointer given to coopLoad/coopStore is indexed
//! by an inline expression: every such index is bound with `let` first.

/// Invocations per subgroup that a fragment side of `size` needs (see the module doc).
pub const fn subgroup_for(size: u32) -> u32 {
    size * size / 8
}

/// The variant code at conv2d_tiled.wgsl's markers for `size` x `size` x `size` fragments.
pub(super) fn markers(size: u32) -> [(&'static str, String); 5] {
    let c = format!("coop_mat{size}x{size}<f32, C>");
    [
        ("@generated-tile-code", tile_code(size)),
        ("@entry-builtins", "@builtin(subgroup_id) sid: u32,".into()),
        (
            "@acc-init",
            format!("let frag = frag_origin(sid);\nvar c0 = {c}();\nvar c1 = {c}();"),
        ),
        (
            "@mac",
            "c0 = coop_mac(c0, frag.x, frag.y);\nc1 = coop_mac(c1, frag.x, frag.y + MS);".into(),
        ),
        (
            "@acc-finish",
            "acc = coop_finish(c0, c1, frag, tx, ty);".into(),
        ),
    ]
}

/// The declarations: f16 tiles with unpadded rows (cooperative loads want rows that start on
/// 16-byte boundaries), the fragment layout, and the multiply and store functions.
fn tile_code(size: u32) -> String {
    let m = |role: &str, t: &str| format!("coop_mat{size}x{size}<{t}, {role}>");
    let (a, b, c) = (m("A", "f16"), m("B", "f16"), m("C", "f32"));
    [
        "enable f16;".to_string(),
        "enable wgpu_cooperative_matrix;".into(),
        "alias tile_t = f16;".into(),
        "const AS: u32 = BM;".into(),
        "const BS: u32 = BN;".into(),
        format!("const MS: u32 = {size}u; // fragment side"),
        "// Subgroups per row of fragment pairs.".into(),
        "const SG_COLS: u32 = BN / (2u * MS);".into(),
        "var<workgroup> tile_a: array<tile_t, BK * AS>;".into(),
        "var<workgroup> tile_b: array<tile_t, BK * BS>;".into(),
        "var<workgroup> tile_c: array<f32, BM * BN>;".into(),
        String::new(),
        "// (row, column) in the output tile of subgroup sid's first fragment.".into(),
        "fn frag_origin(sid: u32) -> vec2<u32> {".into(),
        "    return vec2<u32>((sid / SG_COLS) * MS, (sid % SG_COLS) * 2u * MS);".into(),
        "}".into(),
        String::new(),
        "// c + A[rows row.., the step] x B[the step, columns col..]: tile_a is reduced-index".into(),
        "// major (a column-major A), tile_b row-major.".into(),
        format!("fn coop_mac(c: {c}, row: u32, col: u32) -> {c} {{"),
        "    var acc = c;".into(),
        "    for (var kk = 0u; kk < BK; kk += MS) {".into(),
        "        let ai = kk * AS + row;".into(),
        "        let bi = kk * BS + col;".into(),
        format!("        let a = coopLoad<{a}>(&tile_a[ai], AS);"),
        format!("        let b = coopLoadT<{b}>(&tile_b[bi], BS);"),
        "        acc = coopMultiplyAdd(a, b, acc);".into(),
        "    }".into(),
        "    return acc;".into(),
        "}".into(),
        String::new(),
        "fn tile_c_row(i: u32) -> vec4<f32> {".into(),
        "    return vec4<f32>(tile_c[i], tile_c[i + 1u], tile_c[i + 2u], tile_c[i + 3u]);".into(),
        "}".into(),
        String::new(),
        "// The subgroups' fragments stored row-major to tile_c, then this invocation's 4 x 4".into(),
        "// share read back: the epilogue is the register-tile variant's.".into(),
        format!("fn coop_finish(c0: {c}, c1: {c}, frag: vec2<u32>, tx: u32, ty: u32) -> Acc {{"),
        "    let i0 = frag.x * BN + frag.y;".into(),
        "    coopStoreT(c0, &tile_c[i0], BN);".into(),
        "    let i1 = i0 + MS;".into(),
        "    coopStoreT(c1, &tile_c[i1], BN);".into(),
        "    workgroupBarrier();".into(),
        "    let r = ty * 4u * BN + tx * 4u;".into(),
        "    return Acc(tile_c_row(r), tile_c_row(r + BN), tile_c_row(r + 2u * BN), tile_c_row(r + 3u * BN));".into(),
        "}".into(),
    ]
    .join("\n")
}

//! The CUDA kernel sources, checked without a GPU: every entry point compiles under NVRTC for
//! sm_80 and sm_90 (NVRTC from PyPI, see `.ci/run`), ptxas takes them, the flash kernels' fast
//! paths are in the PTX, the engine's list of entry points is the sources' list, and the
//! device's dropout hash, transcribed here, gives the CPU's masks.

use nanogpt::kernels::cpu::dropout::dropout_inplace;
use nanogpt::kernels::cuda::{
    compile_ptx, entry_points, nvrtc_available, program, ATTENTION_HEAD_SIZES, SOURCES,
};
use nanogpt::rng::{dropout_key, keep, Rng};
use std::collections::BTreeSet;

/// NVRTC is on the library path, or: in CI (CI=true) the test fails; elsewhere it is skipped
/// with a note.
fn nvrtc_or_skip(test: &str) -> bool {
    if nvrtc_available() {
        return true;
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(
        !in_ci,
        "{test}: NVRTC (libnvrtc.so) is not on LD_LIBRARY_PATH; .ci/run installs it into .nvrtc/"
    );
    eprintln!("{test}: skipped, NVRTC not found (run .ci/run, or put libnvrtc on LD_LIBRARY_PATH)");
    false
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    if !nvrtc_or_skip("every_kernel_compiles_for_sm80_and_sm90") {
        return;
    }
    for cc in [80, 90] {
        let ptx = compile_ptx(cc).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            ptx.contains(&format!(".target sm_{cc}")),
            "PTX for compute_{cc} targets another architecture"
        );
        let missing: Vec<String> = entry_points()
            .into_iter()
            .filter(|name| !ptx.contains(&format!(".entry {name}(")))
            .collect();
        assert!(
            missing.is_empty(),
            "compute_{cc}: entry points missing from the PTX: {missing:?}"
        );
    }
}

/// The program as machine code (CUBIN) for sm_`cc`, with ptxas's log (`-v`: registers and
/// spills per kernel); Err with the log when it fails.
fn compile_cubin(cc: u32) -> Result<(usize, String), String> {
    use cudarc::nvrtc::{result, sys};
    let src = std::ffi::CString::new(program()).expect("no NUL in the sources");
    let prog = result::create_program(&src, Some(c"nanogpt_kernels.cu")).expect("nvrtc program");
    let opts = [
        format!("--gpu-architecture=sm_{cc}"),
        "--std=c++17".into(),
        "--ptxas-options=-v".into(),
    ];
    // SAFETY: prog was created above and is destroyed once, at the end; the log and the size
    // are read while it lives.
    unsafe {
        let compiled = result::compile_program(prog, &opts);
        let log = result::get_program_log(prog).expect("nvrtc log");
        let log: String = log
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8 as char)
            .collect();
        let mut size = 0usize;
        let sized = sys::nvrtcGetCUBINSize(prog, &mut size).result();
        result::destroy_program(prog).expect("destroy nvrtc program");
        match (compiled, sized) {
            (Ok(()), Ok(())) if size > 0 => Ok((size, log)),
            _ => Err(log),
        }
    }
}

/// Compiling to PTX passes inline PTX (`mma.sync` in common.cu) through unread; ptxas, which
/// NVRTC runs when the target is a real architecture, checks it: for sm_90 (the H100/H200; the
/// same `mma.sync` is valid from sm_80 on), and for sm_75 (Turing, the oldest this NVRTC
/// targets), where the bf16 `mma.sync` does not exist and must not reach ptxas, or the engine
/// could not load its kernels at all there. Prints each bf16 attention kernel's registers and
/// spills for sm_90 (what decides its speed) from ptxas's report.
#[test]
fn ptxas_accepts_the_kernels_for_sm75_and_sm90() {
    if !nvrtc_or_skip("ptxas_accepts_the_kernels_for_sm75_and_sm90") {
        return;
    }
    for cc in [75, 90] {
        let (size, log) = compile_cubin(cc)
            .unwrap_or_else(|log| panic!("ptxas rejects the kernels for sm_{cc}: {log}"));
        println!("sm_{cc}: {size} bytes of CUBIN");
        let mut lines = log.lines().peekable();
        while let Some(line) = lines.next() {
            if cc == 90 && line.contains("Compiling entry function 'flash_") {
                let name = line.split('\'').nth(1).unwrap_or(line);
                // "Function properties for NAME", then the stack and spills, then registers.
                let report: Vec<&str> = lines
                    .by_ref()
                    .take(3)
                    .skip(1)
                    .map(|l| {
                        l.trim_start_matches("ptxas")
                            .trim_start_matches([' ', '.', ':'])
                    })
                    .map(|l| l.trim_start_matches("info").trim_start_matches([' ', ':']))
                    .collect();
                println!("  {name}: {}", report.join("; "));
            }
        }
    }
}

/// The `__global__` functions the sources define (macro-made `NAME_##HS` ones expanded for each
/// head size).
fn entries_in_sources() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (_, src) in SOURCES {
        for rest in src.split("__global__ void").skip(1) {
            let mut rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix("__launch_bounds__(") {
                rest = after
                    .split_once(')')
                    .expect("launch bounds close")
                    .1
                    .trim_start();
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '#')
                .collect();
            match name.strip_suffix("_##HS") {
                Some(stem) => {
                    names.extend(ATTENTION_HEAD_SIZES.iter().map(|hs| format!("{stem}_{hs}")))
                }
                None => {
                    names.insert(name);
                }
            }
        }
    }
    names
}

#[test]
fn entry_list_is_the_sources_list() {
    let listed: BTreeSet<String> = entry_points().into_iter().collect();
    let defined = entries_in_sources();
    assert!(defined.len() > 20, "found only {defined:?} in the sources");
    assert_eq!(
        listed, defined,
        "kernels::cuda::entry_points() and the .cu files disagree"
    );
}

#[test]
fn kernel_sources_include_no_headers() {
    for (name, src) in SOURCES {
        assert!(
            !src.contains("#include"),
            "{name} includes a header; NVRTC has none at run time"
        );
    }
}

// The device's hash (common.cu's mix64 and keep), transcribed line for line.
const MUL_1: u64 = 0xBF58476D1CE4E5B9;
const MUL_2: u64 = 0x94D049BB133111EB;
const INDEX_MUL: u64 = 0xD6E8FEB86659FD93;

fn device_mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(MUL_1);
    z = (z ^ (z >> 27)).wrapping_mul(MUL_2);
    z ^ (z >> 31)
}

fn device_keep(key: u64, index: u64, p_drop: f32) -> bool {
    let bits = device_mix64(key ^ index.wrapping_mul(INDEX_MUL));
    (bits >> 40) as f32 * (1.0f32 / 16777216.0f32) >= p_drop
}

#[test]
fn the_transcribed_hash_is_the_one_in_common_cu() {
    let common = SOURCES
        .iter()
        .find(|(name, _)| *name == "common.cu")
        .expect("common.cu")
        .1;
    let code: String = common
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        format!("(z ^ (z >> 30)) * 0x{MUL_1:X}ULL"),
        format!("(z ^ (z >> 27)) * 0x{MUL_2:X}ULL"),
        "return z ^ (z >> 31);".to_string(),
        format!("mix64(key ^ (index * 0x{INDEX_MUL:X}ULL))"),
        "(float)(hash_index(key, index) >> 40) * (1.0f / 16777216.0f) >= p_drop".to_string(),
    ] {
        assert!(
            code.contains(&needle),
            "common.cu no longer contains `{needle}`"
        );
    }
}

#[test]
fn device_dropout_hash_gives_the_cpu_masks() {
    let mut rng = Rng::new(7);
    let mut kept = 0u64;
    let n = 200_000u64;
    for trial in 0..n {
        let key = dropout_key(rng.next_u64(), (trial % 13) as usize, trial % 4);
        let index = if trial % 2 == 0 {
            rng.below(1 << 40)
        } else {
            trial
        };
        let p = [0.0f32, 0.1, 0.2, 0.5, 0.9, 1.0 / 3.0][(trial % 6) as usize];
        let dev = device_keep(key, index, p);
        assert_eq!(dev, keep(key, index, p), "key {key:#x} index {index} p {p}");
        kept += u64::from(dev);
    }
    // Not a constant function: about 1 - mean(p) of the elements are kept.
    let expect = n as f64 * (1.0 - (0.1 + 0.2 + 0.5 + 0.9 + 1.0 / 3.0) / 6.0);
    assert!(
        (kept as f64 - expect).abs() < 0.01 * n as f64,
        "kept {kept} of {n}"
    );

    // The CPU's dropout kernel over a buffer: the elements it zeroes are the ones the device drops.
    let (key, p) = (dropout_key(1234, 3, 2), 0.25f32);
    let mut x = vec![1.0f32; 100_003];
    dropout_inplace(&mut x, key, p);
    for (i, &v) in x.iter().enumerate() {
        assert_eq!(v != 0.0, device_keep(key, i as u64, p), "element {i}");
    }
}

// f16.cu's f16_bits, transcribed line for line.
fn device_f16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    let sign = (u >> 16) & 0x8000;
    let mut a = u & 0x7fff_ffff;
    if a > 0x7f80_0000 {
        return (sign | 0x7e00 | ((a >> 13) & 0x3ff)) as u16;
    }
    if a >= 0x477f_f000 {
        return (sign | 0x7c00) as u16;
    }
    if a >= 0x3880_0000 {
        a -= 0x3800_0000;
        return (sign | ((a + 0xfff + ((a >> 13) & 1)) >> 13)) as u16;
    }
    let shift = 126 - (a >> 23);
    if shift > 24 {
        return sign as u16;
    }
    let m = (a & 0x7f_ffff) | 0x80_0000;
    let mut n = m >> shift;
    let rest = m & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    if rest > half || (rest == half && n & 1 == 1) {
        n += 1;
    }
    (sign | n) as u16
}

#[test]
fn the_transcribed_f16_rounding_is_the_one_in_f16_cu() {
    let f16_cu = SOURCES
        .iter()
        .find(|(name, _)| *name == "f16.cu")
        .expect("f16.cu")
        .1;
    let code: String = f16_cu
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "if (a > 0x7f800000u) return (f16)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));",
        "if (a >= 0x477ff000u) return (f16)(sign | 0x7c00u);",
        "if (a >= 0x38800000u) {\na -= 0x38000000u;\nreturn (f16)(sign | ((a + 0xfffu + ((a >> 13) & 1u)) >> 13));",
        "unsigned int shift = 126u - (a >> 23);\nif (shift > 24u) return (f16)sign;",
        "unsigned int m = (a & 0x7fffffu) | 0x800000u;\nunsigned int n = m >> shift;",
        "unsigned int rest = m & ((1u << shift) - 1u);\nunsigned int half = 1u << (shift - 1u);",
        "if (rest > half || (rest == half && (n & 1u))) n++;\nreturn (f16)(sign | n);",
    ] {
        assert!(code.contains(needle), "f16.cu no longer contains `{needle}`");
    }
}

/// The transcription against the `half` crate's f32 -> f16 (IEEE round to nearest even): every
/// f16 value, the midpoints between neighbours (ties) and one f32 step either side of them, and
/// a sweep of all f32 bit patterns.
#[test]
fn f16_rounding_is_ieee_round_to_nearest_even() {
    let check = |x: f32| {
        let (got, want) = (device_f16_bits(x), half::f16::from_f32(x));
        if x.is_nan() {
            assert!(half::f16::from_bits(got).is_nan(), "{x} gave {got:#06x}");
        } else {
            assert_eq!(got, want.to_bits(), "{x:e} ({:#010x})", x.to_bits());
        }
    };
    for h in 0..=u16::MAX {
        let lo = half::f16::from_bits(h).to_f32();
        let hi = half::f16::from_bits(h.wrapping_add(1)).to_f32();
        check(lo);
        if lo.is_finite() && hi.is_finite() && hi.abs() > lo.abs() {
            let mid = (lo as f64 + hi as f64) / 2.0;
            let mid = mid as f32;
            for x in [
                mid,
                f32::from_bits(mid.to_bits() - 1),
                f32::from_bits(mid.to_bits() + 1),
            ] {
                check(x);
            }
        }
    }
    for u in (0..=u32::MAX).step_by(97) {
        check(f32::from_bits(u));
    }
}

/// Each entry point's PTX body (from `.entry NAME(` to the next entry), by name.
fn ptx_bodies(ptx: &str) -> Vec<(String, String)> {
    ptx.split(".entry ")
        .skip(1)
        .map(|body| {
            let name = body.split('(').next().unwrap_or_default().to_string();
            (name, body.to_string())
        })
        .collect()
}

/// The bf16 flash kernels' fast paths reach the PTX: shared-memory fragments by `ldmatrix`
/// (plain and transposing), exponentials on the special-function unit alone (`ex2.approx`, not
/// the accurate expf's dozen instructions around it), and the tiles by cp.async, 16 bytes a copy.
#[test]
fn flash_kernels_use_ldmatrix_fast_exponentials_and_vector_copies() {
    if !nvrtc_or_skip("flash_kernels_use_ldmatrix_fast_exponentials_and_vector_copies") {
        return;
    }
    let ptx = compile_ptx(90).unwrap_or_else(|e| panic!("{e:#}"));
    let flash: Vec<(String, String)> = ptx_bodies(&ptx)
        .into_iter()
        .filter(|(name, _)| name.starts_with("flash_"))
        .collect();
    // The accurate expf's range reduction multiplies by this constant before its ex2.approx;
    // the exact f32 kernels keep that expf.
    const ACCURATE_EXPF: &str = "0f3BBB989D";
    let exact = ptx_bodies(&ptx)
        .into_iter()
        .find(|(name, _)| name == "attention_forward_64")
        .expect("attention_forward_64 in the PTX");
    assert!(
        exact.1.contains(ACCURATE_EXPF),
        "the accurate expf's signature changed"
    );
    assert_eq!(flash.len(), 3 * ATTENTION_HEAD_SIZES.len());
    for (name, body) in &flash {
        let count = |needle: &str| body.matches(needle).count();
        println!(
            "{name}: ldmatrix {} (.trans {}), ex2.approx {}, cp.async 16 B {}, mma {}",
            count("ldmatrix"),
            count(".trans"),
            count("ex2.approx"),
            count("cp.async.cg.shared.global"),
            count("mma.sync")
        );
        assert!(
            count("ldmatrix") > 0 && count(".trans") > 0,
            "{name}: no ldmatrix"
        );
        assert!(
            count("ex2.approx") > 0 && count(ACCURATE_EXPF) == 0,
            "{name}: not the fast exponential"
        );
        assert!(
            count("cp.async.cg.shared.global") > 0 && count("cp.async.wait_group") > 0,
            "{name}: no cp.async"
        );
    }
}

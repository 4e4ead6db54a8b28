//! bfloat16 matrix products on Intel's AMX tile units (Xeon Sapphire Rapids and later):
//! `out = a @ w + bias (+ residual)` with `a` rounded to bfloat16 per call, `w` packed once,
//! the products accumulated in float32. One `tdpbf16ps` multiplies a 16x32 tile by a 32x16
//! one (8,192 multiply-adds); the AVX-512 float32 path does 32 per cycle, so products run
//! several times faster, at bfloat16's 8-bit mantissa on their inputs (`--precision bf16`).
//!
//! Tiles: `tmm0..3` accumulate a 32x32 output block, `tmm4/5` hold two 16-row strips of `a`,
//! `tmm6/7` two 16-column strips of `w` in AMX's pair-interleaved ("VNNI") layout.

use std::cell::RefCell;
use std::sync::OnceLock;

/// `a` values per tile row (64 bytes of bfloat16); also the `k` step of one product.
const TILE_K: usize = 32;
const TILE_ROWS: usize = 16;
const TILE_COLS: usize = 16;
/// bfloat16 values in one packed tile of `w`: 16 rows of 16 column pairs.
const TILE_VALUES: usize = TILE_ROWS * TILE_K;

/// Whether this CPU has AMX with bfloat16 and the kernel lets this process use it (checked
/// once; Linux hands out the tile state on request).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    #[allow(unused_unsafe)]
    let (max_leaf, leaf7) = unsafe { (__cpuid(0).eax, __cpuid_count(7, 0)) };
    // Leaf 7, EDX: bit 22 AMX-BF16, bit 24 AMX-TILE.
    if max_leaf < 7 || leaf7.edx & (1 << 22) == 0 || leaf7.edx & (1 << 24) == 0 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call; it fails (non-zero) where the kernel has no AMX support.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> bool {
    false
}

/// bfloat16 nearest to `x`, ties to even (as `vcvtneps2bf16` and PyTorch round).
pub fn bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// A `[k, n]` row-major float32 matrix packed as bfloat16 tiles for [`matmul`]: 32-column
/// blocks (two tiles side by side), each `k` tile of a block after the other.
#[derive(Debug, Clone)]
pub struct PackedBf16 {
    k: usize,
    n: usize,
    k_tiles: usize,
    /// 16-column tiles, rounded up to an even count (blocks are two tiles wide).
    n_tiles: usize,
    data: Vec<u16>,
}

impl PackedBf16 {
    pub fn pack(w: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(w.len(), k * n, "weights are not [k, n]");
        let k_tiles = k.div_ceil(TILE_K);
        let n_tiles = n.div_ceil(2 * TILE_COLS) * 2;
        let mut data = vec![0u16; n_tiles * k_tiles * TILE_VALUES];
        for (t, tile) in data.chunks_exact_mut(TILE_VALUES).enumerate() {
            let (nt, kt) = (t / k_tiles, t % k_tiles);
            // Row r of a tile holds, for each of its 16 columns, the values of rows 2r and
            // 2r + 1 of its k strip next to each other.
            for (r, row) in tile.chunks_exact_mut(2 * TILE_COLS).enumerate() {
                for (c, pair) in row.chunks_exact_mut(2).enumerate() {
                    let col = nt * TILE_COLS + c;
                    for (j, v) in pair.iter_mut().enumerate() {
                        let kk = kt * TILE_K + 2 * r + j;
                        if kk < k && col < n {
                            *v = bf16(w[kk * n + col]);
                        }
                    }
                }
            }
        }
        Self {
            k,
            n,
            k_tiles,
            n_tiles,
            data,
        }
    }

    pub fn inputs(&self) -> usize {
        self.k
    }

    pub fn outputs(&self) -> usize {
        self.n
    }
}

#[derive(Default)]
struct Scratch {
    /// `a` rounded to bfloat16, `[rows rounded up to 16, k_tiles * 32]`, zero-padded.
    a: Vec<u16>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// One 16x16 float32 accumulator tile as it leaves the tile registers.
#[repr(C, align(64))]
struct Tile([f32; TILE_ROWS * TILE_COLS]);

/// `out[rows, n] = a[rows, k] @ w + bias (+ residual)`, `a` and `out` row-major.
///
/// # Panics
/// If AMX is not [`available`], or the slices do not have the shapes above.
pub fn matmul(
    a: &[f32],
    rows: usize,
    w: &PackedBf16,
    bias: &[f32],
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    assert!(available(), "AMX bfloat16 is not available on this CPU");
    let (k, n) = (w.k, w.n);
    assert!(a.len() >= rows * k && out.len() >= rows * n && bias.len() == n);
    if let Some(residual) = residual {
        assert!(residual.len() >= rows * n);
    }
    let stride = w.k_tiles * TILE_K;
    SCRATCH.with_borrow_mut(|s| {
        let padded_rows = rows.div_ceil(TILE_ROWS) * TILE_ROWS;
        s.a.clear();
        s.a.resize(padded_rows * stride, 0);
        for (dst, src) in
            s.a.chunks_exact_mut(stride)
                .zip(a[..rows * k].chunks_exact(k))
        {
            for (d, x) in dst.iter_mut().zip(src) {
                *d = bf16(*x);
            }
        }
        let mut tiles = [
            Tile([0.0; 256]),
            Tile([0.0; 256]),
            Tile([0.0; 256]),
            Tile([0.0; 256]),
        ];
        // SAFETY: AMX is available (checked above); the tile loads read whole tiles inside
        // `s.a` (rows padded to 16, columns to `stride`) and `w.data`; stores go to `tiles`.
        unsafe {
            configure_tiles();
            for pair in 0..w.n_tiles / 2 {
                let b = w.data.as_ptr().add(pair * 2 * w.k_tiles * TILE_VALUES);
                let b1 = b.add(w.k_tiles * TILE_VALUES);
                let mut row = 0;
                while row < padded_rows {
                    let strips = if padded_rows - row >= 2 * TILE_ROWS {
                        2
                    } else {
                        1
                    };
                    let a0 = s.a.as_ptr().add(row * stride);
                    block(a0, stride, strips, b, b1, w.k_tiles, &mut tiles);
                    for (t, tile) in tiles.iter().enumerate().take(2 * strips) {
                        let r0 = row + (t / 2) * TILE_ROWS;
                        let c0 = (2 * pair + t % 2) * TILE_COLS;
                        store(tile, r0, c0, rows, n, bias, residual, out);
                    }
                    row += strips * TILE_ROWS;
                }
            }
            release_tiles();
        }
    });
}

/// Adds the bias (and the residual) to the in-bounds part of one accumulator tile.
#[allow(clippy::too_many_arguments)]
fn store(
    tile: &Tile,
    r0: usize,
    c0: usize,
    rows: usize,
    n: usize,
    bias: &[f32],
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    if c0 >= n {
        return;
    }
    let cols = TILE_COLS.min(n - c0);
    for r in r0..rows.min(r0 + TILE_ROWS) {
        let acc = &tile.0[(r - r0) * TILE_COLS..][..cols];
        let dst = &mut out[r * n + c0..][..cols];
        let bias = &bias[c0..c0 + cols];
        match residual {
            Some(res) => {
                let res = &res[r * n + c0..][..cols];
                for (((d, a), b), x) in dst.iter_mut().zip(acc).zip(bias).zip(res) {
                    *d = a + b + x;
                }
            }
            None => {
                for ((d, a), b) in dst.iter_mut().zip(acc).zip(bias) {
                    *d = a + b;
                }
            }
        }
    }
}

/// Every tile 16 rows of 64 bytes (palette 1).
#[cfg(target_arch = "x86_64")]
unsafe fn configure_tiles() {
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }
    let mut config = Config {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [0; 16],
        rows: [0; 16],
    };
    for t in 0..8 {
        config.bytes_per_row[t] = 64;
        config.rows[t] = TILE_ROWS as u8;
    }
    // SAFETY: the caller checked that AMX is available; `config` is a valid 64-byte palette.
    unsafe {
        std::arch::asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly));
    }
}

#[cfg(target_arch = "x86_64")]
unsafe fn release_tiles() {
    // SAFETY: AMX is available (caller).
    unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
}

/// `tiles[0..2 * strips] = a[strips * 16 rows, :] @ [b0 | b1]`: `tiles[2i + j]` is strip i
/// times column tile j.
#[cfg(target_arch = "x86_64")]
unsafe fn block(
    a0: *const u16,
    stride: usize,
    strips: usize,
    b0: *const u16,
    b1: *const u16,
    k_tiles: usize,
    tiles: &mut [Tile; 4],
) {
    use std::arch::asm;
    let a_bytes = stride * 2;
    let b_bytes = 2 * TILE_COLS * 2;
    // SAFETY: the caller's pointers cover `strips` 16-row strips of `k_tiles` tiles of `a`
    // and `k_tiles` tiles of each of `b0`, `b1`; the stores write inside `tiles`.
    unsafe {
        let a1 = a0.add(TILE_ROWS * stride);
        if strips == 2 {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            for kt in 0..k_tiles {
                asm!(
                    "tileloadd tmm4, [{a0} + {sa} * 1]",
                    "tileloadd tmm6, [{b0} + {sb} * 1]",
                    "tileloadd tmm7, [{b1} + {sb} * 1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm5, [{a1} + {sa} * 1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0.add(kt * TILE_K),
                    a1 = in(reg) a1.add(kt * TILE_K),
                    b0 = in(reg) b0.add(kt * TILE_VALUES),
                    b1 = in(reg) b1.add(kt * TILE_VALUES),
                    sa = in(reg) a_bytes,
                    sb = in(reg) b_bytes,
                    options(nostack, readonly)
                );
            }
            asm!(
                "tilestored [{t0} + {s} * 1], tmm0",
                "tilestored [{t1} + {s} * 1], tmm1",
                "tilestored [{t2} + {s} * 1], tmm2",
                "tilestored [{t3} + {s} * 1], tmm3",
                t0 = in(reg) tiles[0].0.as_mut_ptr(),
                t1 = in(reg) tiles[1].0.as_mut_ptr(),
                t2 = in(reg) tiles[2].0.as_mut_ptr(),
                t3 = in(reg) tiles[3].0.as_mut_ptr(),
                s = in(reg) TILE_COLS * 4,
                options(nostack)
            );
        } else {
            asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
            for kt in 0..k_tiles {
                asm!(
                    "tileloadd tmm4, [{a0} + {sa} * 1]",
                    "tileloadd tmm6, [{b0} + {sb} * 1]",
                    "tileloadd tmm7, [{b1} + {sb} * 1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    a0 = in(reg) a0.add(kt * TILE_K),
                    b0 = in(reg) b0.add(kt * TILE_VALUES),
                    b1 = in(reg) b1.add(kt * TILE_VALUES),
                    sa = in(reg) a_bytes,
                    sb = in(reg) b_bytes,
                    options(nostack, readonly)
                );
            }
            asm!(
                "tilestored [{t0} + {s} * 1], tmm0",
                "tilestored [{t1} + {s} * 1], tmm1",
                t0 = in(reg) tiles[0].0.as_mut_ptr(),
                t1 = in(reg) tiles[1].0.as_mut_ptr(),
                s = in(reg) TILE_COLS * 4,
                options(nostack)
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn configure_tiles() {}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn release_tiles() {}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block(
    _: *const u16,
    _: usize,
    _: usize,
    _: *const u16,
    _: *const u16,
    _: usize,
    _: &mut [Tile; 4],
) {
    unreachable!("AMX is x86-64 only; available() is false elsewhere")
}

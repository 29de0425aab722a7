//! A tiny seeded pseudo-random generator (SplitMix64) for election jitter.
//!
//! Owns: the only source of randomness in the core. Must never: be seeded from the clock or
//! the OS; the seed comes from the configuration so runs replay exactly.

/// SplitMix64 (Steele, Lea and Flood, 2014): small, fast, good enough for jitter.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `[0, bound)`; `0` when `bound` is `0`.
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        // Lemire's multiply-shift: unbiased enough for jitter, no division.
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

//! What a bench client does next: the op (read or write), the key (uniform or zipfian over
//! the key space) and the key's bytes. Deterministic from a seed, so two runs against two
//! systems issue the same sequence.

/// The op mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Writes only.
    Write,
    /// RheaKV's benchmark mix: 90 % writes, 10 % linearizable reads.
    Mix,
    /// Read-heavy: 95 % reads, 5 % writes.
    Read,
    /// Lock cycles (Flotilla only): acquire a lock named by a key (waiting while another
    /// client holds it), release it; one op is the whole cycle. `--keys 1`: every client
    /// on one lock; `--keys` at least `--clients`: mostly uncontended.
    Lock,
    /// `seq next` of one value on a sequence named by a key (Flotilla only).
    Sequence,
    /// Lease keep-alives (Flotilla only): `--keys` leases granted first (60 s to live),
    /// then each op keeps one of them alive.
    KeepAlive,
    /// Writes under watch (Flotilla only): `--watchers` watches of every key each receive
    /// every write; measures delivery (from the put's call to the event's arrival) and
    /// events per second.
    Watch,
}

impl std::str::FromStr for Workload {
    type Err = String;

    fn from_str(text: &str) -> Result<Workload, String> {
        match text {
            "write" => Ok(Workload::Write),
            "mix" => Ok(Workload::Mix),
            "read" => Ok(Workload::Read),
            "lock" => Ok(Workload::Lock),
            "sequence" => Ok(Workload::Sequence),
            "keep-alive" => Ok(Workload::KeepAlive),
            "watch" => Ok(Workload::Watch),
            other => Err(format!(
                "unknown workload {other:?}: expected write, mix, read, lock, sequence, \
                 keep-alive or watch"
            )),
        }
    }
}

impl Workload {
    /// Percentage of ops that are reads.
    pub fn read_percent(self) -> u64 {
        match self {
            Workload::Write
            | Workload::Lock
            | Workload::Sequence
            | Workload::KeepAlive
            | Workload::Watch => 0,
            Workload::Mix => 10,
            Workload::Read => 95,
        }
    }

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Write => "write",
            Workload::Mix => "mix",
            Workload::Read => "read",
            Workload::Lock => "lock",
            Workload::Sequence => "sequence",
            Workload::KeepAlive => "keep-alive",
            Workload::Watch => "watch",
        }
    }
}

/// How keys are picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// YCSB's zipfian (constant 0.99): a few keys take most of the ops.
    Zipfian,
}

impl std::str::FromStr for Distribution {
    type Err = String;

    fn from_str(text: &str) -> Result<Distribution, String> {
        match text {
            "uniform" => Ok(Distribution::Uniform),
            "zipfian" => Ok(Distribution::Zipfian),
            other => Err(format!(
                "unknown distribution {other:?}: expected uniform or zipfian"
            )),
        }
    }
}

/// Bytes of every key: 8 bytes spreading keys over the key space (so static regions, split
/// by the first bytes, share the load), then the key's number (so keys are distinct).
pub const KEY_BYTES: usize = 16;

/// The key numbered `index`.
pub fn key(index: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(KEY_BYTES);
    key.extend_from_slice(&mix64(index).to_be_bytes());
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// splitmix64's finaliser: a bijection that spreads consecutive numbers.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A small seeded generator (splitmix64: a counter through the finaliser).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix64(self.0)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, bound) (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        // Lemire's multiply-shift; the bias is below 2^-32 for the bounds used here.
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

/// Picks key numbers in [0, keys).
#[derive(Clone, Debug)]
pub enum KeyChooser {
    /// Uniform.
    Uniform {
        /// Key count.
        keys: u64,
    },
    /// Gray et al.'s "Quickly generating billion-record synthetic databases" (1994), as
    /// YCSB's ZipfianGenerator: rank 0 is the hottest key.
    Zipfian {
        /// Key count.
        keys: u64,
        theta: f64,
        alpha: f64,
        zeta_n: f64,
        eta: f64,
    },
}

/// YCSB's zipfian constant.
const ZIPF_THETA: f64 = 0.99;

fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

impl KeyChooser {
    /// A chooser over `keys` keys (at least 1). Zipfian costs O(keys) once, here.
    pub fn new(distribution: Distribution, keys: u64) -> KeyChooser {
        let keys = keys.max(1);
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform { keys },
            Distribution::Zipfian => {
                let theta = ZIPF_THETA;
                let zeta_n = zeta(keys, theta);
                let zeta_2 = zeta(2, theta);
                let eta = (1.0 - (2.0 / keys as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n);
                KeyChooser::Zipfian {
                    keys,
                    theta,
                    alpha: 1.0 / (1.0 - theta),
                    zeta_n,
                    eta,
                }
            }
        }
    }

    /// The next key number.
    pub fn next(&self, rng: &mut Rng) -> u64 {
        match *self {
            KeyChooser::Uniform { keys } => rng.below(keys),
            KeyChooser::Zipfian {
                keys,
                theta,
                alpha,
                zeta_n,
                eta,
            } => {
                let u = rng.next_f64();
                let uz = u * zeta_n;
                if uz < 1.0 || keys == 1 {
                    return 0;
                }
                if uz < 1.0 + 0.5f64.powf(theta) {
                    return 1;
                }
                let rank = (keys as f64 * (eta * u - eta + 1.0).powf(alpha)) as u64;
                rank.min(keys - 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_fixed_size_and_spread_over_the_first_byte() {
        let mut first_bytes = [0u32; 256];
        let mut seen = std::collections::HashSet::new();
        for index in 0..25_600u64 {
            let key = key(index);
            assert_eq!(key.len(), KEY_BYTES);
            first_bytes[key[0] as usize] += 1;
            assert!(seen.insert(key), "key {index} repeated");
        }
        // 100 per first byte on average: every byte used, none more than twice its share.
        assert!(
            first_bytes.iter().all(|&n| n > 0 && n < 200),
            "{first_bytes:?}"
        );
    }

    #[test]
    fn uniform_covers_the_range_evenly() {
        let chooser = KeyChooser::new(Distribution::Uniform, 10);
        let mut rng = Rng::new(7);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[chooser.next(&mut rng) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&n| (9_000..11_000).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn zipfian_is_skewed_towards_low_ranks_and_stays_in_range() {
        let keys = 1000;
        let chooser = KeyChooser::new(Distribution::Zipfian, keys);
        let mut rng = Rng::new(11);
        let mut counts = vec![0u32; keys as usize];
        let draws = 200_000;
        for _ in 0..draws {
            let rank = chooser.next(&mut rng);
            assert!(rank < keys);
            counts[rank as usize] += 1;
        }
        // With theta 0.99 over 1000 keys rank 0 takes about 13 % of the draws, rank 1
        // about half of that, and the top 10 ranks about 39 %.
        let share = |n: u32| f64::from(n) / f64::from(draws);
        assert!(
            (0.10..0.16).contains(&share(counts[0])),
            "rank 0: {}",
            counts[0]
        );
        assert!(counts[0] > counts[1] && counts[1] > counts[10]);
        let top10: u32 = counts[..10].iter().sum();
        assert!((0.33..0.45).contains(&share(top10)), "top 10: {top10}");
        // The tail is reached.
        assert!(counts[500..].iter().sum::<u32>() > 0);
    }

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let chooser = KeyChooser::new(Distribution::Zipfian, 100);
        let (mut a, mut b) = (Rng::new(3), Rng::new(3));
        let one: Vec<u64> = (0..50).map(|_| chooser.next(&mut a)).collect();
        let two: Vec<u64> = (0..50).map(|_| chooser.next(&mut b)).collect();
        assert_eq!(one, two);
        assert_eq!("mix".parse::<Workload>(), Ok(Workload::Mix));
        assert!("scan".parse::<Workload>().is_err());
        assert!("pareto".parse::<Distribution>().is_err());
    }
}

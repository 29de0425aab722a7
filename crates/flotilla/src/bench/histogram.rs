//! A fixed-size latency histogram (log-linear buckets, as HdrHistogram's): 64 buckets per
//! power of two, so a reported percentile is at most 1/64 (1.6 %) above the true value and
//! never below it. Memory is bounded whatever the run's length (a sample list is not: at
//! 100,000 ops/s a minute is 6 million samples).

/// Sub-buckets per power of two (2^SUB_BITS).
const SUB_BITS: u32 = 6;
const SUB_COUNT: u64 = 1 << SUB_BITS;
/// Values (microseconds) at or above this are counted in the last bucket: 2^40 µs is
/// about 12.7 days.
const VALUE_MAX: u64 = (1 << 40) - 1;
/// Buckets: exact below 2 * SUB_COUNT, then SUB_COUNT per octave up to 2^40.
const BUCKETS: usize = ((40 - SUB_BITS) as usize + 1) * SUB_COUNT as usize;

/// Latencies in microseconds.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            max: 0,
        }
    }
}

fn bucket_of(value: u64) -> usize {
    let value = value.min(VALUE_MAX);
    if value < 2 * SUB_COUNT {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let shift = exponent - SUB_BITS;
    // `value >> shift` is in [SUB_COUNT, 2 * SUB_COUNT).
    (shift as usize) * SUB_COUNT as usize + (value >> shift) as usize
}

/// The largest value that falls in `bucket`.
fn bucket_high(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < 2 * SUB_COUNT {
        return bucket;
    }
    let shift = bucket / SUB_COUNT - 1;
    let sub = bucket % SUB_COUNT + SUB_COUNT;
    ((sub + 1) << shift) - 1
}

impl Histogram {
    /// Counts one latency.
    pub fn record(&mut self, micros: u64) {
        self.counts[bucket_of(micros)] += 1;
        self.count += 1;
        self.max = self.max.max(micros);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.count += other.count;
        self.max = self.max.max(other.max);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The largest sample, in microseconds.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The smallest value (µs) that at least `percent` % of the samples do not exceed,
    /// rounded up to its bucket's top (and never above the maximum). 0 when empty.
    pub fn percentile(&self, percent: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let wanted = ((percent / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return bucket_high(bucket).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut previous_high = None;
        for bucket in 0..BUCKETS {
            let high = bucket_high(bucket);
            if let Some(previous) = previous_high {
                assert!(high > previous, "bucket {bucket}: {high} <= {previous}");
                // Every value just above the previous bucket lands here.
                assert_eq!(bucket_of(previous + 1), bucket);
            }
            assert_eq!(bucket_of(high), bucket, "the top of bucket {bucket}");
            previous_high = Some(high);
        }
        for value in [0, 1, 127, 128, 129, 1000, 65_432, 1 << 30, VALUE_MAX] {
            let high = bucket_high(bucket_of(value));
            assert!(high >= value);
            assert!(
                (high - value) as f64 <= value as f64 / SUB_COUNT as f64,
                "{value} reported as {high}"
            );
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut histogram = Histogram::default();
        assert_eq!(histogram.percentile(50.0), 0);
        for micros in 1..=10_000u64 {
            histogram.record(micros);
        }
        assert_eq!(histogram.count(), 10_000);
        assert_eq!(histogram.max(), 10_000);
        for (percent, exact) in [(50.0, 5_000u64), (99.0, 9_900), (99.9, 9_990)] {
            let got = histogram.percentile(percent);
            assert!(got >= exact, "p{percent}: {got} < {exact}");
            assert!(
                got <= exact + exact / 64,
                "p{percent}: {got} too far above {exact}"
            );
        }
        assert_eq!(histogram.percentile(100.0), 10_000);
        // One slow outlier moves the max and p100 but not the median.
        let mut other = Histogram::default();
        other.record(5_000_000);
        histogram.merge(&other);
        assert_eq!(histogram.max(), 5_000_000);
        assert_eq!(histogram.percentile(100.0), 5_000_000);
        assert!(histogram.percentile(50.0) <= 5_100);
        // Beyond the top bucket: counted, max kept exactly.
        histogram.record(u64::MAX);
        assert_eq!(histogram.max(), u64::MAX);
    }
}

//! The one source of randomness for the protocol layers: tags, branches, call tokens,
//! Call-IDs, nonce counters and glare delays all draw from here.
//!
//! Each thread has its own generator, seeded from the operating system. A simulator or a
//! fuzzer calls [`reseed`] before a run so that every random draw, and with it the whole run,
//! is reproduced by the seed (the clock is injected the same way: as an argument).

use std::cell::RefCell;
use std::hash::BuildHasher;

use rand::distributions::{Distribution, Standard};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

thread_local! {
    static RNG: RefCell<StdRng> = RefCell::new(StdRng::from_entropy());
}

/// Make this thread's draws a function of `seed` from now on.
pub fn reseed(seed: u64) {
    RNG.with(|r| *r.borrow_mut() = StdRng::seed_from_u64(seed));
}

/// A random value of any type `rand` can draw uniformly.
pub fn random<T>() -> T
where
    Standard: Distribution<T>,
{
    RNG.with(|r| r.borrow_mut().r#gen())
}

/// A random value in `range`.
pub fn range<T, R>(range: R) -> T
where
    T: rand::distributions::uniform::SampleUniform,
    R: rand::distributions::uniform::SampleRange<T>,
{
    RNG.with(|r| r.borrow_mut().gen_range(range))
}

/// `n` random characters from `alphabet` (which must not be empty).
pub fn token(n: usize, alphabet: &[u8]) -> String {
    RNG.with(|r| {
        let mut r = r.borrow_mut();
        (0..n)
            .filter_map(|_| alphabet.get(r.gen_range(0..alphabet.len().max(1))))
            .map(|&b| char::from(b))
            .collect()
    })
}

/// Hash maps and sets of the protocol layers. Their hasher is keyed from this source: random
/// per process in production (no one can aim collisions at a table), a function of the seed in
/// a simulation (so iteration order, and with it the whole run, is reproduced).
pub type HashMap<K, V> = std::collections::HashMap<K, V, Keyed>;

/// See [`HashMap`].
pub type HashSet<K> = std::collections::HashSet<K, Keyed>;

/// A SipHash-1-3 hasher builder (the rounds the standard library's own maps use) with keys
/// drawn from this source.
#[derive(Debug, Clone, Copy)]
pub struct Keyed {
    k0: u64,
    k1: u64,
}

impl Default for Keyed {
    fn default() -> Self {
        Self {
            k0: random(),
            k1: random(),
        }
    }
}

impl BuildHasher for Keyed {
    type Hasher = siphasher::sip::SipHasher13;

    fn build_hasher(&self) -> Self::Hasher {
        siphasher::sip::SipHasher13::new_with_keys(self.k0, self.k1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_reproduces_the_draws() {
        reseed(7);
        let a: (u64, u32, String) = (random(), range(0..=2000), token(12, b"abc"));
        reseed(7);
        let b: (u64, u32, String) = (random(), range(0..=2000), token(12, b"abc"));
        assert_eq!(a, b);
        reseed(8);
        let c: u64 = random();
        assert_ne!(a.0, c);
    }
}

//! One aya loader for every object an [`super::AssetLoader`] loads.
//!
//! aya 0.14's `EbpfLoader::new()` parses `/sys/kernel/btf/vmlinux` (5.5 MB here) every
//! time, even when the caller then hands it a BTF it parsed already: one loader per
//! object cost one parse per object, six per start, half of the start's CPU time. An
//! `EbpfLoader` can load any number of objects, so the asset loader keeps one beside the
//! BTF it borrows ([`Kernel`]), and every load goes through an [`ObjectLoader`] that says
//! what this one object needs.
//!
//! What makes sharing it delicate: the constants (`override_global`) and map sizes
//! (`map_max_entries`) given to an `EbpfLoader` stay in it by name, and aya cannot remove
//! one. A name set for one object would then apply to any later object that has a
//! symbol of that name and does not set it itself. So each load states its complete
//! settings, and before loading, the object's symbols are checked against every name
//! set earlier and not now: when the object has one, this load gets a fresh loader of its
//! own (one parse more, never a value meant for another object). A constant's
//! `must_exist` is checked here against the same symbols, because the shared loader must
//! not refuse an object for a name another object set.
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;

use aya::{Btf, Ebpf, EbpfError, EbpfLoader};
use aya_obj::ParseError;
use object::{Object, ObjectSymbol};

use crate::btf::{BtfError, FoundBtf};

/// The shared loader, created at the first load (its constructor parses the BTF once).
pub(super) type Shared<'a> = OnceLock<Mutex<SharedState<'a>>>;

self_cell::self_cell!(
    /// The kernel BTF discovery found (or why none) and the one aya loader borrowing it.
    pub(super) struct Kernel {
        owner: Result<FoundBtf, BtfError>,
        #[not_covariant]
        dependent: Shared,
    }
);

impl Kernel {
    pub(super) fn with_btf(btf: Result<FoundBtf, BtfError>) -> Self {
        Kernel::new(btf, |_| OnceLock::new())
    }
}

pub(super) struct SharedState<'a> {
    aya: EbpfLoader<'a>,
    /// Every constant and map name set so far: they stay in `aya`.
    globals: BTreeSet<&'static str>,
    max_entries: BTreeSet<&'static str>,
}

/// What one object needs from the loader: its constants and map sizes. `f` of
/// [`super::AssetLoader::load_core_asset`] sets them and calls [`ObjectLoader::load`].
pub struct ObjectLoader<'r, 'k> {
    /// The BTF this object is relocated against (`None`: no CO-RE relocation).
    btf: Option<&'k Btf>,
    shared: &'r Shared<'k>,
    /// Counts the `EbpfLoader`s created (each one parses the kernel's BTF).
    created: &'r AtomicUsize,
    globals: Vec<(&'static str, &'static [u8])>,
    max_entries: Vec<(&'static str, u32)>,
}

impl<'r, 'k> ObjectLoader<'r, 'k> {
    pub(super) fn new(btf: Option<&'k Btf>, shared: &'r Shared<'k>, created: &'r AtomicUsize) -> Self {
        Self { btf, shared, created, globals: Vec::new(), max_entries: Vec::new() }
    }

    /// Sets the object's constant `name` (a `volatile const` global) to `value`, in the
    /// native byte order. The object must have it.
    pub fn global(&mut self, name: &'static str, value: &[u8]) -> &mut Self {
        self.globals.retain(|(n, _)| *n != name);
        self.globals.push((name, intern(value)));
        self
    }

    /// Sets the size of the object's map `name` before it is created.
    pub fn max_entries(&mut self, name: &'static str, entries: u32) -> &mut Self {
        self.max_entries.retain(|(n, _)| *n != name);
        self.max_entries.push((name, entries));
        self
    }

    /// Parses, relocates and loads `object` with exactly the settings given here.
    pub fn load(&mut self, object: &[u8]) -> Result<Ebpf, EbpfError> {
        let Ok(symbols) = symbol_names(object) else {
            // Not a readable ELF: aya says why, in its own terms.
            return self.load_fresh(object);
        };
        if let Some((name, _)) = self.globals.iter().find(|(name, _)| !symbols.contains(*name)) {
            return Err(EbpfError::ParseError(ParseError::SymbolNotFound { name: (*name).to_string() }));
        }
        let shared = self.shared.get_or_init(|| {
            self.created.fetch_add(1, Ordering::Relaxed);
            let state = SharedState {
                aya: take_constructed_ahead().unwrap_or_default(),
                globals: BTreeSet::new(),
                max_entries: BTreeSet::new(),
            };
            Mutex::new(state)
        });
        let mut state = shared.lock().unwrap_or_else(PoisonError::into_inner);
        let inherited = self.names_left_over(&state).find(|name| symbols.contains(*name));
        if let Some(name) = inherited {
            tracing::debug!(name, "a setting of an earlier object names a symbol of this one: own loader");
            drop(state);
            return self.load_fresh(object);
        }
        // Also drops the loader's own parse at the first load: relocation uses `btf`.
        state.aya.btf(self.btf);
        for (name, value) in &self.globals {
            state.aya.override_global(name, *value, false);
            state.globals.insert(name);
        }
        for (name, entries) in &self.max_entries {
            state.aya.map_max_entries(name, *entries);
            state.max_entries.insert(name);
        }
        state.aya.load(object)
    }

    /// The names set in the shared loader by earlier objects that this object does not set.
    fn names_left_over<'s>(&'s self, state: &'s SharedState<'_>) -> impl Iterator<Item = &'static str> + 's {
        let globals = state.globals.iter().filter(|n| !self.globals.iter().any(|(g, _)| g == *n));
        let maps = state.max_entries.iter().filter(|n| !self.max_entries.iter().any(|(m, _)| m == *n));
        globals.chain(maps).copied()
    }

    /// A loader of this load's own, holding nothing but its settings.
    fn load_fresh(&self, object: &[u8]) -> Result<Ebpf, EbpfError> {
        self.created.fetch_add(1, Ordering::Relaxed);
        let mut aya = EbpfLoader::new();
        aya.btf(self.btf);
        for (name, value) in &self.globals {
            aya.override_global(name, *value, true);
        }
        for (name, entries) in &self.max_entries {
            aya.map_max_entries(name, *entries);
        }
        aya.load(object)
    }
}

/// An aya loader whose constructor (and its BTF parse) ran ahead on a thread of its own.
enum Ahead {
    Idle,
    Running(JoinHandle<EbpfLoader<'static>>),
    Ready(Box<EbpfLoader<'static>>),
}

static AHEAD: Mutex<Ahead> = Mutex::new(Ahead::Idle);

/// Starts constructing the first shared loader now, on a thread of its own: its
/// constructor parses the kernel's BTF whatever it is later given, so at start-up that
/// parse runs beside discovery's own instead of after it (two cores, half the wall
/// time). The first shared loader created in the process takes it.
pub fn construct_ahead() -> std::io::Result<()> {
    let mut ahead = AHEAD.lock().unwrap_or_else(PoisonError::into_inner);
    if matches!(*ahead, Ahead::Idle) {
        *ahead = Ahead::Running(std::thread::Builder::new().name("aya-loader".into()).spawn(construct)?);
    }
    Ok(())
}

/// An aya loader without the BTF its constructor parsed: every load sets the BTF it is
/// relocated against. Dropping that parse (127,000 types, 2–3 ms) here keeps it off the
/// first load, which would drop it when it sets its own.
fn construct() -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    loader
}

/// Waits for the loader constructed ahead, if it still runs, and keeps it for the first
/// shared loader: start-up calls this before dropping privileges, so no thread started
/// with them outlives start-up.
pub fn settle_constructed_ahead() {
    let mut ahead = AHEAD.lock().unwrap_or_else(PoisonError::into_inner);
    if let Ahead::Running(_) = &*ahead
        && let Ahead::Running(thread) = std::mem::replace(&mut *ahead, Ahead::Idle)
        && let Ok(loader) = thread.join()
    {
        *ahead = Ahead::Ready(Box::new(loader));
    }
}

/// The loader constructed ahead, once: `None` when there is none (or its thread panicked).
fn take_constructed_ahead() -> Option<EbpfLoader<'static>> {
    let taken = std::mem::replace(&mut *AHEAD.lock().unwrap_or_else(PoisonError::into_inner), Ahead::Idle);
    match taken {
        Ahead::Idle => None,
        Ahead::Running(thread) => thread.join().ok(),
        Ahead::Ready(loader) => Some(*loader),
    }
}

/// Every symbol name of an ELF object: its constants, maps and functions.
fn symbol_names(object: &[u8]) -> Result<BTreeSet<String>, object::Error> {
    let file = object::File::parse(object)?;
    Ok(file.symbols().filter_map(|s| s.name().ok()).map(str::to_string).collect())
}

/// `value`, kept for the rest of the process. aya borrows every constant for as long as
/// its loader lives, and the shared loader lives as long as its asset loader; each
/// distinct value is kept once (a few flags, offsets and sizes), so this stays small.
fn intern(value: &[u8]) -> &'static [u8] {
    static VALUES: Mutex<BTreeSet<&'static [u8]>> = Mutex::new(BTreeSet::new());
    let mut values = VALUES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(kept) = values.get(value) {
        return kept;
    }
    let kept: &'static [u8] = Box::leak(value.into());
    values.insert(kept);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_are_kept_once() {
        let a = intern(&7u32.to_ne_bytes());
        let b = intern(&7u32.to_ne_bytes());
        assert!(std::ptr::eq(a, b));
        assert_ne!(intern(&8u32.to_ne_bytes()), a);
    }
}

//! [`MemStore`]: the in-memory, fault-injecting twin of the object stores,
//! for unit and model tests only (it keeps everything in RAM).
//!
//! Faults ([`Faults`]): fail the Nth put and every operation after it (a
//! store that died), fail only the Nth put (a transient error), and flip a
//! byte of a stored object ([`MemStore::corrupt`]). It counts puts and bytes
//! put, so tests can say how much a push uploaded.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::store::{Error, ObjectInfo, ObjectStore};

/// What to break, counted in puts since [`MemStore::set_faults`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// The Nth put (1-based) fails and so does every operation after it,
    /// until [`MemStore::heal`].
    pub die_at_put: Option<u64>,
    /// Only the Nth put fails.
    pub fail_put: Option<u64>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Bytes>,
    faults: Faults,
    puts_since_faults: u64,
    dead: bool,
    puts: u64,
    bytes_put: u64,
}

/// Objects in a `BTreeMap`, behind a mutex.
#[derive(Default)]
pub struct MemStore {
    state: Mutex<State>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    pub fn set_faults(&self, faults: Faults) {
        let mut st = self.state.lock().unwrap();
        st.faults = faults;
        st.puts_since_faults = 0;
    }

    /// The store comes back (and forgets its faults).
    pub fn heal(&self) {
        let mut st = self.state.lock().unwrap();
        st.dead = false;
        st.faults = Faults::default();
    }

    /// Flips the bits of byte `offset` of `key`. Panics when there is no such
    /// byte (a broken test).
    pub fn corrupt(&self, key: &str, offset: u64) {
        let mut st = self.state.lock().unwrap();
        let object = st.objects.get_mut(key).expect("object to corrupt exists");
        let mut bytes = object.to_vec();
        bytes[offset as usize] ^= 0xff;
        *object = Bytes::from(bytes);
    }

    /// (puts, bytes put) since the store was made.
    pub fn put_stats(&self) -> (u64, u64) {
        let st = self.state.lock().unwrap();
        (st.puts, st.bytes_put)
    }

    pub fn keys(&self) -> Vec<String> {
        self.state.lock().unwrap().objects.keys().cloned().collect()
    }

    fn unavailable(op: &'static str, key: &str) -> Error {
        Error::Unavailable {
            store: "mem://".into(),
            op,
            key: key.to_owned(),
            reason: "injected fault: the store is dead".into(),
        }
    }

    fn alive(
        &self,
        op: &'static str,
        key: &str,
    ) -> Result<std::sync::MutexGuard<'_, State>, Error> {
        let st = self.state.lock().unwrap();
        if st.dead {
            return Err(MemStore::unavailable(op, key));
        }
        Ok(st)
    }
}

impl ObjectStore for MemStore {
    fn describe(&self) -> String {
        "mem://".into()
    }

    fn put(&self, key: &str, data: Bytes) -> Result<(), Error> {
        let mut st = self.alive("put", key)?;
        st.puts_since_faults += 1;
        let n = st.puts_since_faults;
        if st.faults.die_at_put == Some(n) {
            st.dead = true;
            return Err(MemStore::unavailable("put", key));
        }
        if st.faults.fail_put == Some(n) {
            return Err(MemStore::unavailable("put", key));
        }
        st.puts += 1;
        st.bytes_put += data.len() as u64;
        st.objects.insert(key.to_owned(), data);
        Ok(())
    }

    fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, Error> {
        let st = self.alive("get", key)?;
        let object = st.objects.get(key).ok_or_else(|| Error::NotFound {
            store: "mem://".into(),
            key: key.to_owned(),
        })?;
        if object.len() as u64 > max {
            return Err(Error::oversized("mem://".into(), "get", key, max));
        }
        Ok(object.to_vec())
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        let st = self.alive("get", key)?;
        let object = st.objects.get(key).ok_or_else(|| Error::NotFound {
            store: "mem://".into(),
            key: key.to_owned(),
        })?;
        let start = (offset as usize).min(object.len());
        let end = (offset.saturating_add(len) as usize).min(object.len());
        Ok(object[start..end].to_vec())
    }

    fn head(&self, key: &str) -> Result<Option<u64>, Error> {
        let st = self.alive("head", key)?;
        Ok(st.objects.get(key).map(|b| b.len() as u64))
    }

    fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<ObjectInfo>, Error> {
        let st = self.alive("list", prefix)?;
        Ok(st
            .objects
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
            .take(max)
            .map(|(k, v)| ObjectInfo {
                key: k.clone(),
                size: v.len() as u64,
            })
            .collect())
    }

    fn delete(&self, key: &str) -> Result<(), Error> {
        let mut st = self.alive("delete", key)?;
        st.objects.remove(key);
        Ok(())
    }
}

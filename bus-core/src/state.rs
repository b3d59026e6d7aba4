//! Shared application state: what [`crate::BusBuilder::state`] stores and the
//! [`crate::State`] extractor reads, kept at the bottom of the crate so the runtime can hold it.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

/// A state type a handler requires, checked when the bus is built.
#[derive(Clone, Copy, Debug)]
pub struct StateRequirement {
    /// The state's type id.
    pub type_id: TypeId,
    /// Its name, for the error message.
    pub type_name: &'static str,
}

/// Values given with [`crate::BusBuilder::state`], by type.
#[derive(Clone, Default)]
pub(crate) struct StateMap(HashMap<TypeId, Arc<dyn Any + Send + Sync>>);

impl StateMap {
    pub(crate) fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        self.0.insert(TypeId::of::<T>(), Arc::new(value));
    }

    pub(crate) fn get<T: Clone + 'static>(&self) -> Option<T> {
        self.0.get(&TypeId::of::<T>())?.downcast_ref::<T>().cloned()
    }

    pub(crate) fn contains(&self, id: TypeId) -> bool {
        self.0.contains_key(&id)
    }
}

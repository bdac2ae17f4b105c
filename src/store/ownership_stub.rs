//! PROVISIONAL (replaced by the ownership storage work).
use super::{Result, Store, StoreError};
use crate::container::Ownership;
impl Store {
    pub(crate) fn set_ownership(&self, rel: &str, _own: &Ownership) -> Result<()> {
        Err(StoreError::NotLocal(self.backend.display_path(rel)))
    }
}

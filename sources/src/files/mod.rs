//! The files source on the way back: writing a snapshot's tree to disk so that nothing outside
//! the restore's root is touched, whatever the tree or the target's current contents say.

pub mod apply;
pub mod beneath;
pub mod restore;
pub mod target;

#[cfg(test)]
pub(crate) mod tests;

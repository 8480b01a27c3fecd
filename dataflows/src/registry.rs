//! The one list of views. Adding a view is one file in this crate plus one line in [`VIEWS`]:
//! its snapshot, HTTP read, SQL table and frontier follow from its [`ViewDef`].

use differential_dataflow::VecCollection;
use vitalflow_schemas::{Epoch, Row, Sample, ViewDef};

use crate::{daily_rollups, daily_rollups_by_source};

/// The collections every view may read.
#[derive(Clone)]
pub struct Inputs<'s> {
    /// Current samples: an edit is a retraction of the old row and an insertion of the new one.
    pub samples: VecCollection<'s, Epoch, Sample>,
}

/// A registered view: its shape and the function that builds it.
#[derive(Clone, Copy)]
pub struct ViewSpec {
    pub def: ViewDef,
    pub build: for<'s> fn(&Inputs<'s>) -> VecCollection<'s, Epoch, Row>,
}

/// Every view vitalflow maintains, in a fixed order (a view's index is its id).
pub const VIEWS: &[ViewSpec] = &[
    ViewSpec { def: daily_rollups::DEF, build: |i| daily_rollups::daily_rollups(i.samples.clone()) },
    ViewSpec {
        def: daily_rollups_by_source::DEF,
        build: |i| daily_rollups_by_source::daily_rollups_by_source(i.samples.clone()),
    },
];

/// The view registered under `name`.
pub fn view_index(name: &str) -> Option<usize> {
    VIEWS.iter().position(|v| v.def.name == name)
}

//! The one list of views. Adding a view is one file in this crate plus one line in [`VIEWS`]:
//! its snapshot, HTTP read, SQL table and frontier follow from its [`ViewDef`].

use differential_dataflow::VecCollection;
use vitalflow_schemas::domain::{Product, Session};
use vitalflow_schemas::{Epoch, Row, Sample, UserProfile, ViewDef};

use crate::session_impacts::Impact;
use crate::{
    daily_rollups, daily_rollups_by_source, product_impacts, routine_bins, session_impacts, sessions, sleep_nights,
    weekly_steps,
};

/// The collections every view may read.
#[derive(Clone)]
pub struct Inputs<'s> {
    /// Current samples: an edit is a retraction of the old row and an insertion of the new one.
    pub samples: VecCollection<'s, Epoch, Sample>,
    /// Current consumption sessions (open ones included).
    pub sessions: VecCollection<'s, Epoch, Session>,
    /// Current products.
    pub products: VecCollection<'s, Epoch, Product>,
    /// Current user profiles.
    pub profiles: VecCollection<'s, Epoch, UserProfile>,
    /// `daily_rollups` rows, built once and shared with the views built on them.
    pub daily: VecCollection<'s, Epoch, Row>,
    /// Session impacts, built once and shared by `session_impacts` and `product_impacts`.
    pub impacts: VecCollection<'s, Epoch, Impact>,
}

impl<'s> Inputs<'s> {
    /// The inputs, with the shared intermediate collections built on them.
    pub fn new(
        samples: VecCollection<'s, Epoch, Sample>,
        sessions: VecCollection<'s, Epoch, Session>,
        products: VecCollection<'s, Epoch, Product>,
        profiles: VecCollection<'s, Epoch, UserProfile>,
    ) -> Self {
        let daily = daily_rollups::daily_rollups(samples.clone());
        let impacts = session_impacts::impacts(samples.clone(), sessions.clone());
        Inputs { samples, sessions, products, profiles, daily, impacts }
    }
}

/// A registered view: its shape and the function that builds it.
#[derive(Clone, Copy)]
pub struct ViewSpec {
    pub def: ViewDef,
    pub build: for<'s> fn(&Inputs<'s>) -> VecCollection<'s, Epoch, Row>,
}

/// Every view vitalflow maintains, in a fixed order (a view's index is its id).
pub const VIEWS: &[ViewSpec] = &[
    ViewSpec { def: daily_rollups::DEF, build: |i| i.daily.clone() },
    ViewSpec {
        def: daily_rollups_by_source::DEF,
        build: |i| daily_rollups_by_source::daily_rollups_by_source(i.samples.clone()),
    },
    ViewSpec { def: sleep_nights::DEF, build: |i| sleep_nights::sleep_nights(i.samples.clone()) },
    ViewSpec { def: session_impacts::DEF, build: |i| session_impacts::session_impacts(i.impacts.clone()) },
    ViewSpec { def: product_impacts::DEF, build: |i| product_impacts::product_impacts(i.impacts.clone()) },
    ViewSpec { def: routine_bins::DEF, build: |i| routine_bins::routine_bins(i.sessions.clone()) },
    ViewSpec { def: sessions::SESSIONS, build: |i| sessions::sessions(i.sessions.clone()) },
    ViewSpec { def: sessions::PRODUCTS, build: |i| sessions::products(i.products.clone()) },
    ViewSpec { def: sessions::USER_PROFILES, build: |i| sessions::user_profiles(i.profiles.clone()) },
    ViewSpec { def: weekly_steps::DEF, build: |i| weekly_steps::weekly_steps(i.daily.clone()) },
];

/// The view registered under `name`.
pub fn view_index(name: &str) -> Option<usize> {
    VIEWS.iter().position(|v| v.def.name == name)
}

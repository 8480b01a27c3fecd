//! The one list of views. Adding a view is one file in this crate plus one line in [`VIEWS`]:
//! its snapshot, HTTP read, SQL table and frontier follow from its [`ViewDef`].

use std::cell::OnceCell;

use differential_dataflow::VecCollection;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::ValSpine;
use vitalflow_schemas::domain::Product;
use vitalflow_schemas::{Epoch, Row, UserProfile, ViewDef};

use crate::daily_rollups::DailyRollup;
use crate::names::Name;
use crate::records::{SampleRecord, SessionRecord};
use crate::session_impacts::Impact;
use crate::stats::{self, DiscreteByDay};
use crate::{
    daily_rollups, daily_rollups_by_source, product_impacts, routine_bins, session_impacts, sessions, sleep_nights,
    weekly_steps,
};

/// Current samples arranged by `user_id`: one shared trace, exchanged once (the runtime already
/// sends a user's changes to the worker that owns the user's key, so the exchange stays local).
/// Views read it with `flat_map_ref`, copying only the fields of the samples they keep.
pub type SamplesByUser<'s> = Arranged<'s, TraceAgent<ValSpine<Name, SampleRecord, Epoch, isize>>>;

/// The push of a keyed `reduce_abelian`/`reduce_core` over `Vec` containers: each output
/// `(value, epoch, difference)` of `key` becomes `((key, value), epoch, difference)`, the builder's
/// input (what `reduce_named` does inside differential, for views that reduce an arrangement they
/// share or choose the output trace of).
pub(crate) fn push_keyed<K: Copy, V, T, R>(out: &mut Vec<((K, V), T, R)>, key: &K, upds: &mut Vec<(V, T, R)>) {
    out.clear();
    out.extend(upds.drain(..).map(|(v, t, r)| ((*key, v), t, r)));
}

/// The collections every view may read. Shared intermediate collections are built on first use,
/// so a runtime that maintains only some views builds only what they need.
pub struct Inputs<'s> {
    /// Current samples: an edit is a retraction of the old row and an insertion of the new one.
    /// Views read them through [`Inputs::samples`].
    raw_samples: VecCollection<'s, Epoch, SampleRecord>,
    /// Current consumption sessions (open ones included).
    pub sessions: VecCollection<'s, Epoch, SessionRecord>,
    /// Current products.
    pub products: VecCollection<'s, Epoch, Product>,
    /// Current user profiles.
    pub profiles: VecCollection<'s, Epoch, UserProfile>,
    samples: OnceCell<SamplesByUser<'s>>,
    discrete: OnceCell<DiscreteByDay<'s>>,
    daily: OnceCell<VecCollection<'s, Epoch, DailyRollup>>,
    impacts: OnceCell<VecCollection<'s, Epoch, Impact>>,
}

impl<'s> Inputs<'s> {
    /// The inputs, with the shared intermediate collections built on them.
    pub fn new(
        samples: VecCollection<'s, Epoch, SampleRecord>,
        sessions: VecCollection<'s, Epoch, SessionRecord>,
        products: VecCollection<'s, Epoch, Product>,
        profiles: VecCollection<'s, Epoch, UserProfile>,
    ) -> Self {
        Inputs {
            raw_samples: samples,
            sessions,
            products,
            profiles,
            samples: OnceCell::new(),
            discrete: OnceCell::new(),
            daily: OnceCell::new(),
            impacts: OnceCell::new(),
        }
    }

    /// The samples arranged by user, built once and shared by every view that reads samples.
    pub fn samples(&self) -> SamplesByUser<'s> {
        self.samples
            .get_or_init(|| self.raw_samples.clone().map(|s| (s.user_id, s)).arrange_by_key_named("Samples by user"))
            .clone()
    }

    /// The DISCRETE readings arranged by (user, metric, local date), every source together: one
    /// copy of each reading for `daily_rollups` and `daily_rollups_by_source` ([`DiscreteByDay`]).
    pub fn discrete_by_day(&self) -> DiscreteByDay<'s> {
        self.discrete.get_or_init(|| stats::discrete_by_day(&self.samples())).clone()
    }

    /// `daily_rollups`, typed, built once and shared with the views built on them.
    pub fn daily(&self) -> VecCollection<'s, Epoch, DailyRollup> {
        self.daily.get_or_init(|| daily_rollups::daily_rollups(&self.samples(), &self.discrete_by_day())).clone()
    }

    /// Session impacts, built once and shared by `session_impacts` and `product_impacts`.
    pub fn impacts(&self) -> VecCollection<'s, Epoch, Impact> {
        self.impacts.get_or_init(|| session_impacts::impacts(&self.samples(), self.sessions.clone())).clone()
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
    ViewSpec { def: daily_rollups::DEF, build: |i| i.daily().map(|r| r.to_row()) },
    ViewSpec {
        def: daily_rollups_by_source::DEF,
        build: |i| {
            daily_rollups_by_source::daily_rollups_by_source(&i.samples(), &i.discrete_by_day()).map(|r| r.to_row())
        },
    },
    ViewSpec { def: sleep_nights::DEF, build: |i| sleep_nights::sleep_nights(&i.samples()).map(|r| r.to_row()) },
    ViewSpec { def: session_impacts::DEF, build: |i| session_impacts::session_impacts(i.impacts()) },
    ViewSpec {
        def: product_impacts::DEF,
        build: |i| product_impacts::product_impacts(i.impacts()).map(|r| r.to_row()),
    },
    ViewSpec { def: routine_bins::DEF, build: |i| routine_bins::routine_bins(i.sessions.clone()).map(|r| r.to_row()) },
    ViewSpec { def: sessions::SESSIONS, build: |i| sessions::sessions(i.sessions.clone()) },
    ViewSpec { def: sessions::PRODUCTS, build: |i| sessions::products(i.products.clone()) },
    ViewSpec { def: sessions::USER_PROFILES, build: |i| sessions::user_profiles(i.profiles.clone()) },
    ViewSpec { def: weekly_steps::DEF, build: |i| weekly_steps::weekly_steps(i.daily()).map(|r| r.to_row()) },
];

/// The registered views named in `names` (all of them for `None`), in registry order; an unknown
/// name is an error that lists the known ones.
pub fn select(names: Option<&[String]>) -> Result<Vec<ViewSpec>, String> {
    let Some(names) = names else { return Ok(VIEWS.to_vec()) };
    if let Some(unknown) = names.iter().find(|n| view_index(n).is_none()) {
        let known: Vec<&str> = VIEWS.iter().map(|v| v.def.name).collect();
        return Err(format!("unknown view '{unknown}'; known views: {}", known.join(", ")));
    }
    Ok(VIEWS.iter().filter(|v| names.iter().any(|n| n == v.def.name)).copied().collect())
}

/// The view registered under `name`.
pub fn view_index(name: &str) -> Option<usize> {
    VIEWS.iter().position(|v| v.def.name == name)
}

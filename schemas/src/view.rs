//! The shape of a view (DOMAIN.md §8): its columns, its key, and the one mapping from a row to Arrow
//! (snake_case) and to JSON (camelCase). Views produce [`Row`]s; everything downstream (snapshots,
//! HTTP, SQL) works from the [`ViewDef`] alone, so a new view needs no new serving code.

use std::sync::Arc;

use chrono::Datelike;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Field, Float64Type, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMillisecondType,
};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ordf64::OrdF64;
use crate::time::{days_to_date, format_instant};

/// One value of a row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Datum {
    Null,
    Bool(bool),
    Int(i64),
    Float(OrdF64),
    Str(String),
    /// Days since 1970-01-01.
    Date(i32),
    /// UTC milliseconds.
    Ts(i64),
}

impl Datum {
    /// A float, or null when absent.
    pub fn float(v: Option<f64>) -> Datum {
        v.map_or(Datum::Null, |v| Datum::Float(OrdF64(v)))
    }
    /// The string inside, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Datum::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A view row: one datum per column, in [`ViewDef::columns`] order.
pub type Row = Vec<Datum>;

/// A column's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    Str,
    Int,
    Float,
    Bool,
    Date,
    Timestamp,
}

/// A column: snake_case name (SQL, Arrow) and type. JSON uses the camelCase of the name.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
}

/// Shorthand for a column.
pub const fn col(name: &'static str, ty: ColumnType) -> Column {
    Column { name, ty }
}

/// Everything the serving side needs to know about a view.
#[derive(Clone, Copy, Debug)]
pub struct ViewDef {
    /// SQL table name (DOMAIN.md §8).
    pub name: &'static str,
    /// Columns; the first `key_len` form the key, and the first column shards the snapshot (it is
    /// `user_id` for every per-user view).
    pub columns: &'static [Column],
    pub key_len: usize,
    /// HTTP read path under `/v1/users/{userId}/`, e.g. `daily-rollups`; `None` for SQL only.
    pub route: Option<&'static str>,
    /// Query parameters (camelCase of a column) that filter that column by equality.
    pub filters: &'static [&'static str],
    /// A date or timestamp column that `from`/`to` (inclusive dates) filter. A timestamp counts
    /// by its local date in the row's `zone_id` when the view has one, else in UTC.
    pub range_column: Option<&'static str>,
    /// For a view without a date of its own: `from`/`to` select the rows whose `column` matches a
    /// row of `view` (same user) inside the range there.
    pub range_via: Option<RangeVia>,
}

/// `from`/`to` through another view (e.g. session impacts by their session's start date).
#[derive(Clone, Copy, Debug)]
pub struct RangeVia {
    /// The other view's SQL name; it has a `range_column`.
    pub view: &'static str,
    /// The column both views share (e.g. `session_id`).
    pub column: &'static str,
}

impl ViewDef {
    /// The Arrow schema (snake_case names; key columns non-null).
    pub fn arrow_schema(&self) -> SchemaRef {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| Field::new(c.name, arrow_type(c.ty), i >= self.key_len))
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// Index of the column named `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Builds one record batch from rows.
    pub fn to_record_batch<'a>(
        &self,
        rows: impl IntoIterator<Item = &'a Row> + Clone,
    ) -> Result<RecordBatch, ArrowError> {
        let schema = self.arrow_schema();
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (i, c) in self.columns.iter().enumerate() {
            let cells = rows.clone().into_iter().map(|r| r.get(i).unwrap_or(&Datum::Null));
            arrays.push(build_array(c.ty, cells));
        }
        RecordBatch::try_new(schema, arrays)
    }

    /// The rows of a record batch of this view's [`ViewDef::arrow_schema`], the inverse of
    /// [`ViewDef::to_record_batch`]. Errors: a column count, name or type that differs from the
    /// schema (for example a file written by another version of the view).
    pub fn rows_from_record_batch(&self, batch: &RecordBatch) -> Result<Vec<Row>, ArrowError> {
        let schema = self.arrow_schema();
        if batch.num_columns() != schema.fields().len() {
            return Err(ArrowError::SchemaError(format!(
                "{}: {} columns, the view has {}",
                self.name,
                batch.num_columns(),
                schema.fields().len()
            )));
        }
        for (want, got) in schema.fields().iter().zip(batch.schema().fields()) {
            if want.name() != got.name() || want.data_type() != got.data_type() {
                return Err(ArrowError::SchemaError(format!(
                    "{}: column {} {:?} where the view has {} {:?}",
                    self.name,
                    got.name(),
                    got.data_type(),
                    want.name(),
                    want.data_type()
                )));
            }
        }
        let mut rows: Vec<Row> = (0..batch.num_rows()).map(|_| Vec::with_capacity(self.columns.len())).collect();
        for (c, array) in self.columns.iter().zip(batch.columns()) {
            let cell = |i: usize, f: &dyn Fn(usize) -> Datum| if array.is_null(i) { Datum::Null } else { f(i) };
            for (i, row) in rows.iter_mut().enumerate() {
                row.push(match c.ty {
                    ColumnType::Str => cell(i, &|i| Datum::Str(array.as_string::<i32>().value(i).to_owned())),
                    ColumnType::Int => cell(i, &|i| Datum::Int(array.as_primitive::<Int64Type>().value(i))),
                    ColumnType::Float => {
                        cell(i, &|i| Datum::Float(OrdF64(array.as_primitive::<Float64Type>().value(i))))
                    }
                    ColumnType::Bool => cell(i, &|i| Datum::Bool(array.as_boolean().value(i))),
                    ColumnType::Date => cell(i, &|i| Datum::Date(array.as_primitive::<Date32Type>().value(i))),
                    ColumnType::Timestamp => {
                        cell(i, &|i| Datum::Ts(array.as_primitive::<TimestampMillisecondType>().value(i)))
                    }
                });
            }
        }
        Ok(rows)
    }

    /// `rows` as a JSON array of objects with camelCase keys, written straight to the serializer:
    /// the same bytes as serializing [`ViewDef::row_to_json`] of each row (keys in sorted order,
    /// as `serde_json::Map` keeps them), without building a `Value` tree per row.
    pub fn json_rows<'a>(&self, rows: &'a [&'a Row]) -> JsonRows<'a> {
        let mut keys: Vec<(String, usize)> = self.columns.iter().map(|c| camel_case(c.name)).zip(0..).collect();
        keys.sort();
        // `row_to_json`'s map would keep one value of a repeated key; no view has one.
        debug_assert!(keys.windows(2).all(|w| w[0].0 != w[1].0), "{}: two columns share a JSON key", self.name);
        JsonRows { keys, rows }
    }

    /// The row as a JSON object with camelCase keys.
    pub fn row_to_json(&self, row: &Row) -> Value {
        let mut map = Map::with_capacity(self.columns.len());
        for (c, d) in self.columns.iter().zip(row) {
            map.insert(camel_case(c.name), datum_to_json(d));
        }
        Value::Object(map)
    }
}

fn arrow_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::Str => DataType::Utf8,
        ColumnType::Int => DataType::Int64,
        ColumnType::Float => DataType::Float64,
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Date => DataType::Date32,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
    }
}

fn build_array<'a>(ty: ColumnType, cells: impl Iterator<Item = &'a Datum>) -> ArrayRef {
    match ty {
        ColumnType::Str => {
            let mut b = StringBuilder::new();
            cells.for_each(|d| b.append_option(if let Datum::Str(s) = d { Some(s.as_str()) } else { None }));
            Arc::new(b.finish())
        }
        ColumnType::Int => {
            let mut b = Int64Builder::new();
            cells.for_each(|d| b.append_option(if let Datum::Int(v) = d { Some(*v) } else { None }));
            Arc::new(b.finish())
        }
        ColumnType::Float => {
            let mut b = Float64Builder::new();
            cells.for_each(|d| {
                b.append_option(match d {
                    Datum::Float(v) => Some(v.0),
                    Datum::Int(v) => Some(*v as f64),
                    _ => None,
                })
            });
            Arc::new(b.finish())
        }
        ColumnType::Bool => {
            let mut b = BooleanBuilder::new();
            cells.for_each(|d| b.append_option(if let Datum::Bool(v) = d { Some(*v) } else { None }));
            Arc::new(b.finish())
        }
        ColumnType::Date => {
            let mut b = Date32Builder::new();
            cells.for_each(|d| b.append_option(if let Datum::Date(v) = d { Some(*v) } else { None }));
            Arc::new(b.finish())
        }
        ColumnType::Timestamp => {
            let mut b = TimestampMillisecondBuilder::new().with_timezone("UTC");
            cells.for_each(|d| b.append_option(if let Datum::Ts(v) = d { Some(*v) } else { None }));
            Arc::new(b.finish())
        }
    }
}

/// JSON for one datum: dates as `YYYY-MM-DD`, instants as ISO 8601 with `Z`, non-finite floats null
/// (the one mapping, [`JsonDatum`], that streamed reads write too).
pub fn datum_to_json(d: &Datum) -> Value {
    // Nothing a datum holds fails to become a `Value` (strings, finite numbers, null).
    serde_json::to_value(JsonDatum(d)).unwrap_or(Value::Null)
}

/// Days since 1970-01-01 as `YYYY-MM-DD` (chrono's `%Y-%m-%d`, whose years outside 0–9999 carry a
/// sign).
fn format_date(days: i32) -> String {
    let date = days_to_date(days);
    let (y, m, d) = (date.year(), date.month(), date.day());
    if (0..=9999).contains(&y) { format!("{y:04}-{m:02}-{d:02}") } else { date.format("%Y-%m-%d").to_string() }
}

/// A view's rows as JSON, from [`ViewDef::json_rows`]: serializes as an array of objects.
pub struct JsonRows<'a> {
    /// The camelCase key of each column and the column's index, sorted by key.
    keys: Vec<(String, usize)>,
    rows: &'a [&'a Row],
}

impl Serialize for JsonRows<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.rows.len()))?;
        for row in self.rows {
            seq.serialize_element(&JsonRow { keys: &self.keys, row })?;
        }
        seq.end()
    }
}

/// One row of [`JsonRows`].
struct JsonRow<'a> {
    keys: &'a [(String, usize)],
    row: &'a Row,
}

impl Serialize for JsonRow<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // A row shorter than its columns lacks the keys of the missing cells, as `row_to_json`'s.
        let present = self.keys.iter().filter(|(_, i)| *i < self.row.len()).count();
        let mut map = serializer.serialize_map(Some(present))?;
        for (k, i) in self.keys {
            if let Some(d) = self.row.get(*i) {
                map.serialize_entry(k, &JsonDatum(d))?;
            }
        }
        map.end()
    }
}

/// One datum as JSON: dates as `YYYY-MM-DD`, instants as ISO 8601 with `Z`, non-finite floats
/// null.
struct JsonDatum<'a>(&'a Datum);

impl Serialize for JsonDatum<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Datum::Null => serializer.serialize_unit(),
            Datum::Bool(b) => serializer.serialize_bool(*b),
            Datum::Int(i) => serializer.serialize_i64(*i),
            Datum::Float(f) if f.0.is_finite() => serializer.serialize_f64(f.0),
            Datum::Float(_) => serializer.serialize_unit(),
            Datum::Str(s) => serializer.serialize_str(s),
            Datum::Date(days) => serializer.serialize_str(&format_date(*days)),
            Datum::Ts(ms) => serializer.serialize_str(&format_instant(*ms)),
        }
    }
}

/// `local_date` → `localDate`: the one mapping between SQL and JSON names (DOMAIN.md §8).
pub fn camel_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for ch in snake.chars() {
        if ch == '_' {
            upper = true;
        } else if upper {
            out.extend(ch.to_uppercase());
            upper = false;
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Array;

    const DEF: ViewDef = ViewDef {
        name: "t",
        columns: &[
            col("user_id", ColumnType::Str),
            col("local_date", ColumnType::Date),
            col("total_min", ColumnType::Float),
        ],
        key_len: 2,
        route: Some("t"),
        filters: &[],
        range_column: Some("local_date"),
        range_via: None,
    };

    #[test]
    fn camel_case_maps_names() {
        assert_eq!(camel_case("local_date"), "localDate");
        assert_eq!(camel_case("delta_after_sd"), "deltaAfterSd");
        assert_eq!(camel_case("user_id"), "userId");
    }

    #[test]
    fn rows_become_arrow_and_json() {
        let rows = vec![
            vec![Datum::Str("u".into()), Datum::Date(19_875), Datum::float(Some(1.5))],
            vec![Datum::Str("v".into()), Datum::Date(19_876), Datum::Null],
        ];
        let batch = DEF.to_record_batch(&rows).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.column(2).null_count(), 1);
        let json = DEF.row_to_json(&rows[0]);
        assert_eq!(json, serde_json::json!({"userId": "u", "localDate": "2024-06-01", "totalMin": 1.5}));
    }

    fn datum() -> impl proptest::strategy::Strategy<Value = Datum> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Datum::Null),
            any::<bool>().prop_map(Datum::Bool),
            any::<i64>().prop_map(Datum::Int),
            prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY), Just(-0.0), Just(1e300), Just(5e-324)]
                .prop_map(|f| Datum::Float(OrdF64(f))),
            ".{0,12}".prop_map(Datum::Str),
            prop_oneof![any::<i32>(), -800_000..3_000_000i32].prop_map(Datum::Date),
            prop_oneof![any::<i64>(), -70_000_000_000_000..300_000_000_000_000i64].prop_map(Datum::Ts),
        ]
    }

    proptest::proptest! {
        /// The streamed rows are byte for byte the rows built as `Value`s: any datum in any
        /// column (a mismatched one included), non-finite floats, dates and instants far outside
        /// the plausible range, rows shorter or longer than the columns.
        #[test]
        fn streamed_json_rows_equal_the_value_rows(
            rows in proptest::collection::vec(proptest::collection::vec(datum(), 0..8), 0..6)
        ) {
            const ALL: ViewDef = ViewDef {
                name: "all",
                columns: &[
                    col("user_id", ColumnType::Str),
                    col("n", ColumnType::Int),
                    col("x_value", ColumnType::Float),
                    col("b", ColumnType::Bool),
                    col("local_date", ColumnType::Date),
                    col("start_at", ColumnType::Timestamp),
                ],
                key_len: 1,
                route: None,
                filters: &[],
                range_column: None,
                range_via: None,
            };
            let refs: Vec<&Row> = rows.iter().collect();
            let streamed = serde_json::to_string(&ALL.json_rows(&refs)).unwrap_or_default();
            let values: Vec<Value> = rows.iter().map(|r| ALL.row_to_json(r)).collect();
            proptest::prop_assert_eq!(streamed, serde_json::to_string(&values).unwrap_or_default());
        }
    }

    #[test]
    fn dates_format_as_chrono_formats_them() {
        let edges = [i32::MIN, -719_529, -719_528, -1, 0, 1, 19_875, 2_932_896, 2_932_897, i32::MAX];
        let days = edges.into_iter().chain((-800_000..3_100_000).step_by(997));
        for d in days {
            assert_eq!(format_date(d), days_to_date(d).format("%Y-%m-%d").to_string(), "{d}");
        }
    }

    #[test]
    fn record_batches_turn_back_into_the_same_rows() {
        const ALL: ViewDef = ViewDef {
            name: "all",
            columns: &[
                col("user_id", ColumnType::Str),
                col("n", ColumnType::Int),
                col("x", ColumnType::Float),
                col("b", ColumnType::Bool),
                col("d", ColumnType::Date),
                col("t", ColumnType::Timestamp),
            ],
            key_len: 1,
            route: None,
            filters: &[],
            range_column: None,
            range_via: None,
        };
        let rows = vec![
            vec![
                Datum::Str("u".into()),
                Datum::Int(-3),
                Datum::float(Some(2.25)),
                Datum::Bool(true),
                Datum::Date(19_875),
                Datum::Ts(1_717_200_000_123),
            ],
            vec![Datum::Str("v".into()), Datum::Null, Datum::Null, Datum::Null, Datum::Null, Datum::Null],
        ];
        let batch = ALL.to_record_batch(&rows).unwrap();
        assert_eq!(ALL.rows_from_record_batch(&batch).unwrap(), rows);
        // Another view's batch is refused, not misread.
        assert!(DEF.rows_from_record_batch(&batch).is_err());
    }
}

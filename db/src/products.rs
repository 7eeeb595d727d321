//! The `products` table.

use chrono::{DateTime, Utc};
use tokio_postgres::types::Type;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::page::{Page, PageRequest};
use crate::sql::{AsClient, Sql, StoreError};

#[derive(Debug, Clone)]
pub struct Product {
    pub id: Uuid,
    pub name: String,
    pub owner_id: String,
    pub created_at: DateTime<Utc>,
}

impl From<&Row> for Product {
    fn from(row: &Row) -> Self {
        Product {
            id: row.get("id"),
            name: row.get("name"),
            owner_id: row.get("owner_id"),
            created_at: row.get("created_at"),
        }
    }
}

pub async fn insert_product<C: AsClient>(
    db: &Sql<C>,
    name: &str,
    owner_id: &str,
) -> Result<Product, StoreError> {
    let row = db
        .query_one(
            "insert into products (name, owner_id) values ($1, $2)
             returning id, name, owner_id, created_at",
            &[&name, &owner_id],
        )
        .await?;
    Ok(Product::from(&row))
}

pub async fn product_by_id<C: AsClient>(
    db: &Sql<C>,
    id: Uuid,
) -> Result<Option<Product>, StoreError> {
    let row = db
        .query_typed_opt(
            "select id, name, owner_id, created_at from products where id = $1",
            &[(&id, Type::UUID)],
        )
        .await?;
    Ok(row.as_ref().map(Product::from))
}

/// Loads many products in one statement (the DataLoader's batch).
pub async fn products_by_ids<C: AsClient>(
    db: &Sql<C>,
    ids: &[Uuid],
) -> Result<Vec<Product>, StoreError> {
    let rows = db
        .query_typed(
            "select id, name, owner_id, created_at from products where id = any($1)",
            &[(&ids, Type::UUID_ARRAY)],
        )
        .await?;
    Ok(rows.iter().map(Product::from).collect())
}

/// A page of products, newest first.
pub async fn list_products<C: AsClient>(
    db: &Sql<C>,
    page: &PageRequest,
) -> Result<Page<Product>, StoreError> {
    let (after_at, after_id) = page.after_params();
    let rows = db
        .query_typed(
            "select id, name, owner_id, created_at from products
             where (created_at, id) < ($1, $2)
             order by created_at desc, id desc
             limit $3",
            &[
                (&after_at, Type::TIMESTAMPTZ),
                (&after_id, Type::UUID),
                (&page.limit(), Type::INT8),
            ],
        )
        .await?;
    Ok(Page::from_rows(
        rows.iter().map(Product::from).collect(),
        page,
    ))
}

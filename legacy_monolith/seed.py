"""Fill a database with a realistic, deterministic shop: catalog, customers, orders, payments.

`python -m legacy_monolith seed` gives a few hundred of each; `--payments 100000` scales orders
and payments up for benchmarks (inserted in batches with multi-row INSERT ... RETURNING).
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from legacy_monolith.db import Base, create_schema, utcnow
from legacy_monolith.models import Category, Order, OrderLine, Payment, Product, User
from legacy_monolith.security import hash_password

DEMO_PASSWORD = "password123"
DEMO_USER = "alice@example.com"
STAFF_USER = "staff@legacy-shop.example"
BATCH = 2_000

_CATEGORIES = [
    ("phones", "Phones", None),
    ("laptops", "Laptops", None),
    ("tablets", "Tablets", None),
    ("audio", "Audio", None),
    ("headphones", "Headphones", "audio"),
    ("wearables", "Wearables", None),
    ("cameras", "Cameras", None),
    ("gaming", "Gaming", None),
    ("smart-home", "Smart home", None),
    ("accessories", "Accessories", None),
    ("cases", "Cases & covers", "accessories"),
    ("kitchen", "Kitchen", None),
    ("sports", "Sports & outdoors", None),
    ("books", "Books", None),
]
_BRANDS = ["Aurora", "Novatek", "Kestrel", "Lumen", "Orbis", "Vantage", "Zephyr", "Helix"]
_ADJECTIVES = ["Pro", "Max", "Lite", "Air", "Ultra", "Mini", "Plus", "Neo", "Edge", "One"]
_NOUNS = {
    "phones": "Phone",
    "laptops": "Book",
    "tablets": "Tab",
    "audio": "Speaker",
    "headphones": "Buds",
    "wearables": "Watch",
    "cameras": "Cam",
    "gaming": "Controller",
    "smart-home": "Hub",
    "accessories": "Charger",
    "cases": "Case",
    "kitchen": "Blender",
    "sports": "Bottle",
    "books": "Guide",
}
_FIRST = [
    "Alice",
    "Bruno",
    "Chiara",
    "Daniel",
    "Elif",
    "Farah",
    "Goran",
    "Hana",
    "Ivan",
    "Jonas",
    "Kaito",
    "Lena",
    "Marta",
    "Nikolai",
    "Olga",
    "Pedro",
    "Quinn",
    "Rosa",
    "Sven",
    "Tariq",
]
_LAST = [
    "Almeida",
    "Berg",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Horvat",
    "Ito",
    "Jansen",
    "Kowalski",
    "Larsen",
    "Moreau",
    "Novak",
    "Okafor",
    "Petrov",
    "Rossi",
    "Silva",
]
_STREETS = ["Main St", "Harbour Rd", "Linden Allee", "Rue Verte", "Oak Ave", "Via Roma"]
_CITIES = ["Lisbon", "Berlin", "Lyon", "Zagreb", "Oslo", "Porto", "Milan", "Gdansk"]


@dataclass(frozen=True)
class SeedReport:
    categories: int
    products: int
    users: int
    orders: int
    payments: int
    seconds: float


class AlreadySeeded(Exception):
    """The database already holds data; seeding again needs `reset=True`."""


def _money(value: float) -> Decimal:
    return Decimal(f"{value:.2f}")


def _catalog(db: Session, rng: random.Random, per_category: int) -> list[Product]:
    slugs: dict[str, Category] = {}
    for position, (slug, name, parent) in enumerate(_CATEGORIES):
        category = Category(
            slug=slug,
            name=name,
            parent_id=slugs[parent].id if parent else None,
            sort_order=position,
        )
        db.add(category)
        db.flush()
        slugs[slug] = category
    products = []
    now = utcnow()
    for slug, category in slugs.items():
        for n in range(per_category):
            brand = rng.choice(_BRANDS)
            name = f"{brand} {_NOUNS[slug]} {rng.choice(_ADJECTIVES)} {n + 1}"
            created = now - timedelta(days=rng.randint(30, 900))
            products.append(
                Product(
                    sku=f"{slug[:4].upper()}-{category.id:02d}{n + 1:04d}",
                    name=name,
                    description=f"{name}: the {brand} {_NOUNS[slug].lower()} our customers "
                    f"rate {rng.randint(38, 50) / 10:.1f} out of 5.",
                    category_id=category.id,
                    price=_money(rng.uniform(4, 1800)),
                    currency="EUR",
                    stock_qty=rng.choice([0, 3, 12, 40, 150, 500]),
                    image_path=f"img/{slug}.svg",
                    is_active=rng.random() > 0.03,
                    created_at=created,
                    updated_at=created,
                )
            )
    db.add_all(products)
    db.flush()
    return products


def _users(db: Session, rng: random.Random, count: int, iterations: int) -> list[User]:
    # One hash for every seeded customer: hashing each at production cost would take minutes.
    shared = hash_password(DEMO_PASSWORD, iterations)
    users = [
        User(
            email=DEMO_USER, password_hash=shared, full_name="Alice Almeida", phone="+351210000001"
        ),
        User(
            email=STAFF_USER,
            password_hash=shared,
            full_name="Shop Staff",
            role="staff",
        ),
    ]
    for n in range(count):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        users.append(
            User(
                email=f"{first}.{last}.{n}@example.com".lower(),
                password_hash=shared,
                full_name=f"{first} {last}",
                phone=f"+49{rng.randint(10**9, 10**10 - 1)}" if rng.random() > 0.2 else None,
                created_at=utcnow() - timedelta(days=rng.randint(1, 1200)),
            )
        )
    db.add_all(users)
    db.flush()
    return users


def _payment_story(rng: random.Random) -> list[tuple[str, str | None]]:
    """The payment attempts of one order as (status, failure code), oldest first."""
    roll = rng.random()
    if roll < 0.70:
        return [("captured", None)]
    if roll < 0.76:
        return [("failed", rng.choice(["card_declined", "insufficient_funds"])), ("captured", None)]
    if roll < 0.80:
        return [("partially_refunded", None)]
    if roll < 0.85:
        return [("refunded", None)]
    if roll < 0.90:
        return [("authorized", None)]
    if roll < 0.95:
        return [("failed", "expired_card")]
    return []


def _orders(
    engine: Engine,
    rng: random.Random,
    users: list[User],
    products: list[Product],
    target_payments: int,
    progress: Callable[[int, int], None],
) -> tuple[int, int]:
    customers = [u for u in users if u.role == "customer"]
    sellable = [p for p in products if p.is_active]
    now = utcnow()
    orders_made = payments_made = 0
    while payments_made < target_payments:
        order_rows: list[dict[str, Any]] = []
        plans = []
        for _ in range(BATCH):
            user = rng.choice(customers)
            picks = rng.sample(sellable, rng.randint(1, 4))
            lines = [(p, rng.randint(1, 3)) for p in picks]
            total = sum((p.price * q for p, q in lines), Decimal("0.00"))
            created = now - timedelta(minutes=rng.randint(60, 60 * 24 * 365))
            story = _payment_story(rng)
            cancelled = not story and rng.random() < 0.5
            order_rows.append(
                {
                    "user_id": user.id,
                    "state": "cancelled" if cancelled else "placed",
                    "total_amount": total,
                    "currency": "EUR",
                    "shipping_address": f"{rng.randint(1, 200)} {rng.choice(_STREETS)}, "
                    f"{rng.choice(_CITIES)}",
                    "created_at": created,
                    "updated_at": created,
                    "cancelled_at": created + timedelta(hours=2) if cancelled else None,
                }
            )
            plans.append((user.id, lines, total, created, story))
            payments_made += len(story)
            if payments_made >= target_payments:
                break
        with Session(engine) as db, db.begin():
            ids = list(
                db.scalars(
                    insert(Order).returning(Order.id, sort_by_parameter_order=True), order_rows
                )
            )
            line_rows, payment_rows = [], []
            for order_id, (user_id, lines, total, created, story) in zip(ids, plans, strict=True):
                for product, qty in lines:
                    line_rows.append(
                        {
                            "order_id": order_id,
                            "product_id": product.id,
                            "sku": product.sku,
                            "product_name": product.name,
                            "quantity": qty,
                            "unit_price": product.price,
                            "line_total": product.price * qty,
                        }
                    )
                for step, (status, failure) in enumerate(story):
                    at = created + timedelta(minutes=5 + step * 7)
                    refunded = {
                        "refunded": total,
                        "partially_refunded": _money(float(total) * 0.3) or Decimal("0.01"),
                    }.get(status, Decimal("0.00"))
                    card = rng.random() < 0.8
                    brand, last4 = rng.choice([("visa", "4242"), ("mastercard", "4444")])
                    payment_rows.append(
                        {
                            "order_id": order_id,
                            "user_id": user_id,
                            "amount": total,
                            "currency": "EUR",
                            "method": "card" if card else rng.choice(["wallet", "bank_transfer"]),
                            "status": status,
                            "card_brand": brand if card else None,
                            "card_last4": last4 if card else None,
                            "provider_ref": "psp_" + secrets.token_hex(8),
                            "failure_code": failure,
                            "refunded_amount": refunded,
                            "created_at": at,
                            "updated_at": at + timedelta(days=3) if refunded else at,
                        }
                    )
            db.execute(insert(OrderLine), line_rows)
            if payment_rows:
                db.execute(insert(Payment), payment_rows)
        orders_made += len(order_rows)
        progress(min(payments_made, target_payments), target_payments)
    return orders_made, payments_made


def seed(
    engine: Engine,
    *,
    payments: int = 500,
    users: int = 250,
    products_per_category: int = 30,
    reset: bool = False,
    password_iterations: int = 120_000,
    random_seed: int = 20170401,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> SeedReport:
    """Create the schema if needed and fill it; refuse a non-empty database unless `reset`."""
    started = time.perf_counter()
    if reset:
        Base.metadata.drop_all(engine)
    create_schema(engine)
    rng = random.Random(random_seed)
    with Session(engine, expire_on_commit=False) as db:
        if db.scalar(select(func.count(User.id))):
            raise AlreadySeeded("the database already has users; pass --reset to start over")
        products = _catalog(db, rng, products_per_category)
        people = _users(db, rng, users, password_iterations)
        db.commit()
        for row in (*products, *people):
            db.expunge(row)
    orders, made = _orders(engine, rng, people, products, payments, progress)
    return SeedReport(
        categories=len(_CATEGORIES),
        products=len(products),
        users=len(people),
        orders=orders,
        payments=made,
        seconds=time.perf_counter() - started,
    )

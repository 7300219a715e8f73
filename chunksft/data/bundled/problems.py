"""Deterministic multi-step arithmetic problems at three difficulty levels (our own generator).

Each template draws a few small numbers and returns the question, one `a op b = c` step per line
(2-4 steps) and the final answer. Levels (`LEVELS`), easiest first:

- "small": two-step expressions on a two-digit number with one-digit numbers: sums, differences and
           one-digit products ("Compute 65 - 6 + 9.", "Compute 4 * 8 + 6."); every number and
           result within two digits; the default job's level: short rows (a two-chunk response), so a
           tiny model sees many per CPU-second (~11k distinct problems);
- "sums":  two-step sums and differences of two-digit numbers, as a bare expression
           ("Compute 23 + 45 - 17.");
- "arith": two-step expressions over two-digit numbers with sums, differences and small products,
           precedence included ("Compute 35 + 4 * 8.", "Compute 7 * 9 - 48."), every number and
           result within two digits;
- "chain": "arith" plus three-step chains ("Compute 7 * 12 + 35 - 48.");
- "word":  word problems of 2-4 steps whose numbers must be read out of a sentence (long prompts).
 A problem's *canonical form* is (template, numbers): names and
objects are decoration, so two problems with the same canonical form are the same exercise.
The split of a problem is a pure function of a hash of its canonical form, which makes test and
validation disjoint from train by construction (no two splits can share an exercise).
"""
from __future__ import annotations

import hashlib
import random
from typing import Callable, Iterator

from chunksft.data.template import ReasoningExample

NAMES = ("Tom", "Anna", "Ben", "Lisa", "Sam", "Mia", "Leo", "Emma", "Max", "Zoe", "Omar", "Ivy")
ITEMS = ("apples", "pens", "stickers", "marbles", "books", "cards", "shells", "coins", "cookies", "stamps")

Problem = tuple[str, list[str], str]


def _step(a: int, op: str, b: int, result: int) -> str:
    return f"{a} {op} {b} = {result}"


def _buy_bags(n: tuple[int, ...], name: str, item: str) -> Problem:
    have, bags, per_bag = n
    got = bags * per_bag
    total = have + got
    return (f"{name} has {have} {item}. {name} buys {bags} bags with {per_bag} {item} in each bag. "
            f"How many {item} does {name} have now?",
            [_step(bags, "*", per_bag, got), _step(have, "+", got, total)], str(total))


def _give_find(n: tuple[int, ...], name: str, item: str) -> Problem:
    have, give, find = n
    left = have - give
    total = left + find
    return (f"{name} has {have} {item}. {name} gives {give} {item} to a friend and then finds {find} more. "
            f"How many {item} does {name} have now?",
            [_step(have, "-", give, left), _step(left, "+", find, total)], str(total))


def _shop(n: tuple[int, ...], name: str, item: str) -> Problem:
    boxes, per_box, sold, delivered = n
    stock = boxes * per_box
    left = stock - sold
    total = left + delivered
    return (f"A shop has {boxes} boxes with {per_box} {item} in each box. It sells {sold} {item} and then "
            f"gets {delivered} new {item}. How many {item} does the shop have now?",
            [_step(boxes, "*", per_box, stock), _step(stock, "-", sold, left), _step(left, "+", delivered, total)],
            str(total))


def _change(n: tuple[int, ...], name: str, item: str) -> Problem:
    pens, pen_price, books, book_price, paid = n
    a, b = pens * pen_price, books * book_price
    cost = a + b
    return (f"{name} buys {pens} pens for {pen_price} dollars each and {books} notebooks for {book_price} "
            f"dollars each. {name} pays with {paid} dollars. How many dollars does {name} get back?",
            [_step(pens, "*", pen_price, a), _step(books, "*", book_price, b), _step(a, "+", b, cost),
             _step(paid, "-", cost, paid - cost)], str(paid - cost))


def _reading(n: tuple[int, ...], name: str, item: str) -> Problem:
    per_day, days, extra, pages = n
    read = per_day * days
    done = read + extra
    return (f"A book has {pages} pages. {name} reads {per_day} pages a day for {days} days and then {extra} "
            f"pages more. How many pages are left?",
            [_step(per_day, "*", days, read), _step(read, "+", extra, done), _step(pages, "-", done, pages - done)],
            str(pages - done))


def _share(n: tuple[int, ...], name: str, item: str) -> Problem:
    friends, each, eaten = n
    total = friends * each
    return (f"{friends} friends share {total} {item} equally. Each friend gives away {eaten} of them. "
            f"How many {item} does each friend keep?",
            [_step(total, "/", friends, each), _step(each, "-", eaten, each - eaten)], str(each - eaten))


def _savings(n: tuple[int, ...], name: str, item: str) -> Problem:
    weekly, weeks, spent, jars = n
    earned = weekly * weeks
    rest = earned - spent
    return (f"{name} earns {weekly} dollars a week for {weeks} weeks and spends {spent} dollars. {name} puts "
            f"the rest into {jars} jars equally. How many dollars go into each jar?",
            [_step(weekly, "*", weeks, earned), _step(earned, "-", spent, rest), _step(rest, "/", jars, rest // jars)],
            str(rest // jars))


def _draw_buy_bags(r: random.Random) -> tuple[int, ...]:
    return r.randint(1, 30), r.randint(2, 9), r.randint(2, 9)


def _draw_give_find(r: random.Random) -> tuple[int, ...]:
    have = r.randint(10, 60)
    return have, r.randint(1, have - 1), r.randint(1, 30)


def _draw_shop(r: random.Random) -> tuple[int, ...]:
    boxes, per_box = r.randint(2, 9), r.randint(2, 12)
    return boxes, per_box, r.randint(1, boxes * per_box - 1), r.randint(1, 40)


def _draw_change(r: random.Random) -> tuple[int, ...]:
    pens, pen_price, books, book_price = r.randint(1, 6), r.randint(1, 9), r.randint(1, 6), r.randint(1, 9)
    cost = pens * pen_price + books * book_price
    return pens, pen_price, books, book_price, cost + r.randint(1, 30)


def _draw_reading(r: random.Random) -> tuple[int, ...]:
    per_day, days, extra = r.randint(2, 20), r.randint(2, 9), r.randint(1, 20)
    return per_day, days, extra, per_day * days + extra + r.randint(1, 100)


def _draw_share(r: random.Random) -> tuple[int, ...]:
    each = r.randint(2, 15)
    return r.randint(2, 9), each, r.randint(1, each - 1)


def _draw_savings(r: random.Random) -> tuple[int, ...]:
    weekly, weeks = r.randint(2, 20), r.randint(2, 9)
    earned = weekly * weeks
    jars = r.randint(2, min(6, earned - 1))
    # spend so that the rest divides evenly into the jars
    rest = jars * r.randint(1, (earned - 1) // jars)
    return weekly, weeks, earned - rest, jars


def _expression(text: str, steps: list[str], answer: int) -> Problem:
    return f"Compute {text}.", steps, str(answer)


def _add_sub(n: tuple[int, ...], name: str, item: str) -> Problem:
    a, b, c = n
    return _expression(f"{a} + {b} - {c}", [_step(a, "+", b, a + b), _step(a + b, "-", c, a + b - c)], a + b - c)


def _sub_add(n: tuple[int, ...], name: str, item: str) -> Problem:
    a, b, c = n
    return _expression(f"{a} - {b} + {c}", [_step(a, "-", b, a - b), _step(a - b, "+", c, a - b + c)], a - b + c)


def _mul_add(n: tuple[int, ...], name: str, item: str) -> Problem:
    a, b, c = n
    return _expression(f"{a} * {b} + {c}", [_step(a, "*", b, a * b), _step(a * b, "+", c, a * b + c)], a * b + c)


def _mul_sub(n: tuple[int, ...], name: str, item: str) -> Problem:
    a, b, c = n
    return _expression(f"{a} * {b} - {c}", [_step(a, "*", b, a * b), _step(a * b, "-", c, a * b - c)], a * b - c)


def _add_mul(n: tuple[int, ...], name: str, item: str) -> Problem:
    a, b, c = n  # precedence: the product is the first step
    return _expression(f"{a} + {b} * {c}", [_step(b, "*", c, b * c), _step(a, "+", b * c, a + b * c)], a + b * c)


def _mul_add_sub(n: tuple[int, ...], name: str, item: str) -> Problem:
    a, b, c, d = n
    p, s = a * b, a * b + c
    return _expression(f"{a} * {b} + {c} - {d}", [_step(a, "*", b, p), _step(p, "+", c, s), _step(s, "-", d, s - d)],
                       s - d)


# "arith" keeps every number of a problem, results included, within two digits (<= 99): two-digit
# operands, one-digit factors; "chain" adds a third step on top of the same draws.
def _two_digit(r: random.Random, high: int = 99) -> int:
    return r.randint(10, high)


def _small_product(r: random.Random) -> tuple[int, int]:
    return r.randint(2, 9), r.randint(2, 9)


def _draw_add_sub(r: random.Random) -> tuple[int, ...]:
    a = _two_digit(r, 89)
    b = _two_digit(r, 99 - a)
    return a, b, r.randint(10, a + b)


def _draw_sub_add(r: random.Random) -> tuple[int, ...]:
    a = r.randint(20, 99)
    b = r.randint(10, a)
    return a, b, r.randint(10, 99 - (a - b))


def _draw_mul_add(r: random.Random) -> tuple[int, ...]:
    a, b = _small_product(r)
    while a * b > 89:
        a, b = _small_product(r)
    return a, b, _two_digit(r, 99 - a * b)


def _draw_mul_sub(r: random.Random) -> tuple[int, ...]:
    a, b = _small_product(r)
    while a * b < 10:  # a two-digit subtrahend must fit
        a, b = _small_product(r)
    return a, b, r.randint(10, a * b)


def _draw_add_mul(r: random.Random) -> tuple[int, ...]:
    b, c = _small_product(r)
    while b * c > 89:
        b, c = _small_product(r)
    return _two_digit(r, 99 - b * c), b, c


def _draw_mul_add_sub(r: random.Random) -> tuple[int, ...]:
    a, b, c = _draw_mul_add(r)
    return a, b, c, r.randint(10, a * b + c)


def _one_digit(r: random.Random) -> int:
    return r.randint(2, 9)


def _draw_add_sub_small(r: random.Random) -> tuple[int, ...]:
    return r.randint(10, 90), _one_digit(r), _one_digit(r)


def _draw_sub_add_small(r: random.Random) -> tuple[int, ...]:
    return r.randint(12, 90), _one_digit(r), _one_digit(r)


def _draw_mul_add_small(r: random.Random) -> tuple[int, ...]:
    return (*_small_product(r), _one_digit(r))


def _draw_mul_sub_small(r: random.Random) -> tuple[int, ...]:
    a, b = _small_product(r)
    return a, b, r.randint(2, min(9, a * b))  # never below zero


Template = tuple[Callable[[random.Random], tuple[int, ...]], Callable[..., Problem]]
_SUMS: dict[str, Template] = {"add_sub": (_draw_add_sub, _add_sub), "sub_add": (_draw_sub_add, _sub_add)}
_ARITH: dict[str, Template] = {**_SUMS, "mul_add": (_draw_mul_add, _mul_add), "mul_sub": (_draw_mul_sub, _mul_sub),
                               "add_mul": (_draw_add_mul, _add_mul)}
LEVELS: dict[str, dict[str, Template]] = {
    "small": {"add_sub": (_draw_add_sub_small, _add_sub), "sub_add": (_draw_sub_add_small, _sub_add),
              "mul_add": (_draw_mul_add_small, _mul_add), "mul_sub": (_draw_mul_sub_small, _mul_sub)},
    "sums": _SUMS,
    "arith": _ARITH,
    "chain": {**_ARITH, "mul_add_sub": (_draw_mul_add_sub, _mul_add_sub)},
    "word": {"buy_bags": (_draw_buy_bags, _buy_bags), "give_find": (_draw_give_find, _give_find),
             "shop": (_draw_shop, _shop), "change": (_draw_change, _change), "reading": (_draw_reading, _reading),
             "share": (_draw_share, _share), "savings": (_draw_savings, _savings)},
}
DEFAULT_LEVEL = "small"


def split_of(template: str, numbers: tuple[int, ...]) -> str:
    """The split a canonical problem belongs to: 5% test, 5% validation, 90% train (hash buckets)."""
    key = f"{template}:{','.join(map(str, numbers))}".encode()
    bucket = int.from_bytes(hashlib.sha256(key).digest()[:4], "big") % 100
    return "test" if bucket < 5 else "validation" if bucket < 10 else "train"


def generate(sizes: dict[str, int], seed: int = 0, level: str = DEFAULT_LEVEL) -> dict[str, list[dict]]:
    """Rows {question, steps, answer, template} per split of one level, deterministic in `seed`.

    Problems are drawn from one seeded stream, routed to the split their canonical form hashes to,
    and de-duplicated on the canonical form, until every split has its size.
    """
    templates = LEVELS[level]
    rng = random.Random(seed)
    names = sorted(templates)
    out: dict[str, list[dict]] = {split: [] for split in sizes}
    seen: set[tuple] = set()
    while any(len(out[s]) < n for s, n in sizes.items()):
        template = rng.choice(names)
        draw, render = templates[template]
        numbers = draw(rng)
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        split = split_of(template, numbers)
        if (template, numbers) in seen or split not in out or len(out[split]) >= sizes[split]:
            continue
        seen.add((template, numbers))
        question, steps, answer = render(numbers, name, item)
        out[split].append({"question": question, "steps": steps, "answer": answer, "template": template})
    return out


def examples(rows: list[dict]) -> Iterator[ReasoningExample]:
    for row in rows:
        yield ReasoningExample(row["question"], row["steps"], row["answer"])

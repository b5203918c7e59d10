"""Create benchmark users in a taxi database through taxi's own user store.

Runs with the server's virtual environment (.venv), not bench's, because it imports
taxi and Motor. Prints the new users' ids, one per line, for run.py to hand to the client:

    .venv/bin/python bench/taxi_users.py --mongodb-uri mongodb://127.0.0.1:PORT/taxi_bench --count 1000
"""

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from taxi import database, passwords  # noqa: E402
from taxi.users import RIDER, UserStore  # noqa: E402

# Nobody logs in as these users, so one Argon2 hash serves them all instead of
# spending tens of milliseconds per user.
PASSWORD = "benchmark-password"


async def create_users(uri: str, count: int, prefix: str) -> list[str]:
    client = database.connect(uri)
    try:
        users = UserStore(client[uri.rsplit("/", 1)[1]])
        await users.ensure_indexes()
        password_hash = await passwords.hash_password(PASSWORD)
        user_ids = []
        for number in range(count):
            user = await users.create(f"{prefix}{number}", password_hash, "Bench", f"User {number}", RIDER)
            user_ids.append(user.id)
        return user_ids
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mongodb-uri", required=True, help="database URI, with the database name as its path")
    parser.add_argument("--count", type=int, required=True, help="number of users to create")
    parser.add_argument("--prefix", default="bench-user-", help="username prefix (default %(default)s)")
    args = parser.parse_args()
    for user_id in asyncio.run(create_users(args.mongodb_uri, args.count, args.prefix)):
        print(user_id)


if __name__ == "__main__":
    main()

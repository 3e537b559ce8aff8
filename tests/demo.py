"""The outbound_msg demo: a throwaway cluster, an `expense` table, an outbound message to a
listener on 127.0.0.1, a few changes, and what the listener received."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from support.cluster import Cluster, wait_for  # noqa: E402
from support.listener import Listener  # noqa: E402


def show(title, rows, columns):
    print(f"\n-- {title}")
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
    print(" | ".join(str(c).ljust(w) for c, w in zip(columns, widths)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(v).ljust(w) for v, w in zip(row, widths)))


def main():
    listener = Listener()
    cluster = Cluster()
    try:
        db = cluster.connect()
        print(f"cluster on 127.0.0.1:{cluster.port}, listener at {listener.url}")
        statements = [
            "CREATE EXTENSION outbound_msg",
            """CREATE TABLE expense (
                   id serial PRIMARY KEY,
                   employee text NOT NULL,
                   amount numeric(10,2) NOT NULL,
                   description text,
                   approved boolean NOT NULL DEFAULT false,
                   submitted_at timestamptz NOT NULL DEFAULT now())""",
            f"""SELECT outbound_msg.create_message(
                   'expense', 'Expense to ERP', 'Expense_to_ERP', '{listener.url}',
                   ARRAY['employee', 'amount', 'description', 'approved'], 'postgres')""",
            """INSERT INTO expense (employee, amount, description) VALUES
                   ('Ada', 42.50, 'Train to Zürich'),
                   ('Grace', 1250.00, 'Conference <PGConf> & hotel')""",
            "BEGIN",
            "INSERT INTO expense (employee, amount) VALUES ('Mallory', 99999)",
            "ROLLBACK",
            "UPDATE expense SET approved = true WHERE employee = 'Ada'",
        ]
        for sql in statements:
            print(f"\npostgres=# {' '.join(sql.split())};")
            db.execute(sql)

        queued = "SELECT count(*) FROM outbound_msg.queue"
        wait_for(lambda: db.execute(queued).fetchone()[0] == 0 and
                 len(listener.notifications()) >= 3, what="the deliveries")

        for number, request in enumerate(listener.requests, 1):
            print(f"\n== SOAP message {number} received by the listener "
                  f"(POST {request['path']}, SOAPAction: {request['headers']['soapaction']})")
            print(request["body"].decode())
        rows = [(n["fields"]["Id"], n["fields"]["employee"], n["fields"]["amount"],
                 n["fields"].get("description", "(null: left out)"), n["fields"]["approved"])
                for n in listener.notifications()]
        show("notifications the listener received (Mallory's rolled-back row never left)",
             rows, ["Id", "employee", "amount", "description", "approved"])
        show("outbound_msg.message", db.execute(
            "SELECT object, unique_name, endpoint_url, array_to_string(fields, ', '), evaluate "
            "FROM outbound_msg.message"
        ).fetchall(), ["object", "unique_name", "endpoint_url", "fields", "evaluate"])
        show("queue state: outbound_msg.queue (empty: everything was acknowledged)",
             db.execute("SELECT count(*) FROM outbound_msg.queue").fetchall(), ["queued"])
        db.close()
    finally:
        cluster.stop()
        listener.stop()


if __name__ == "__main__":
    main()

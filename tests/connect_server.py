"""A local Spark Connect server for tests/test_connect.py, in its own process.

``SparkSession.builder.remote("local[2]")`` starts the server inside the
calling process, next to a SparkContext, and a process holds one: the test
session's classic SparkSession (tests/conftest.py) and a Connect server cannot
share the pytest process. So this script starts what ``remote("local[...]")``
starts (a SparkContext with the Connect plugin, per-session artifact
directories), on ``PORT`` with ``TOKEN``, says ``ready`` on stdout and serves
until its stdin closes.

    python connect_server.py PORT TOKEN
"""

from __future__ import annotations

import sys

from pyspark.sql import SparkSession


def main() -> None:
    port, token = sys.argv[1], sys.argv[2]
    spark = (
        SparkSession.builder.master("local[2,4]")  # up to 4 attempts per task: retries tested
        .appName("torchspark-connect-tests")
        .config("spark.plugins", "org.apache.spark.sql.connect.SparkConnectPlugin")
        .config("spark.connect.grpc.binding.port", port)
        .config("spark.connect.authenticate.token", token)
        # What remote("local[...]") sets: each Connect session its own artifacts.
        .config("spark.sql.artifact.isolation.enabled", "true")
        .config("spark.sql.artifact.isolation.alwaysApplyClassloader", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    print("ready", flush=True)
    sys.stdin.read()
    spark.stop()


if __name__ == "__main__":
    main()

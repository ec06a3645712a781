"""Protocol logic for the example servers, with no transport in it.

Each module here turns received bytes into reply bytes and knows nothing about sockets,
so the same code runs on hamanet (`examples/*_server.py`) and on asyncio or uvloop
(`bench/servers/*_logic_server.py`), which is what makes the benchmark like for like.
"""

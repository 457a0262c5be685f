"""The Operator actor (``actor``), the news other actors send it (``messages``) and the sink that
forwards projected control signals to it (``sink``).  Kept import-free so agent and run actors
can import the messages without loading the operator's notification and LLM machinery."""

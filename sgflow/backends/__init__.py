"""Frontend backends: base.py (the contract), native.py (shared by the runtime's Engine and HTTP
server), mock.py (scripted, for tests), engine.py, endpoint.py, openai.py."""

"""The JSON schemas and regexes that benchmarks/bench_grammar.py compiles and walks."""

from __future__ import annotations


def obj(required=None, **properties):
    """An object schema; every property is required unless `required` lists a subset."""
    return {"type": "object", "properties": properties, "required": list(properties) if required is None else required}


STR, INT, NUM, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}


def arr(items, **bounds):
    return {"type": "array", "items": items, **bounds}


def enum(*values):
    return {"enum": list(values)}


JSON_SCHEMAS = {
    "weather_call": obj(location=STR, unit=enum("celsius", "fahrenheit")),
    "search_call": obj(["query"], query=STR, max_results={"type": "integer", "minimum": 1, "maximum": 50}, safe=BOOL),
    "user_profile": obj(["name", "email"], name=STR, email={"type": "string", "format": "email"}, age={"type": "integer", "minimum": 0, "maximum": 130}, bio=STR),
    "address": obj(["street", "city", "country"], street=STR, city=STR, postcode=STR, country={"type": "string", "minLength": 2, "maxLength": 2}),
    "order": obj(order_id=STR, items=arr(obj(sku=STR, qty={"type": "integer", "minimum": 1}, price=NUM), minItems=1), paid=BOOL),
    "sentiment": obj(label=enum("positive", "negative", "neutral"), confidence={"type": "number", "minimum": 0}),
    "entities": obj(entities=arr(obj(text=STR, type=enum("PERSON", "ORG", "LOC", "DATE"), start=INT, end=INT))),
    "calendar_event": obj(["title", "start"], title=STR, start={"type": "string", "format": "date-time"}, end={"type": "string", "format": "date-time"}, attendees=arr({"type": "string", "format": "email"}, maxItems=5)),
    "product": obj(["id", "name", "price"], id={"type": "string", "format": "uuid"}, name=STR, price=NUM, tags=arr(STR, maxItems=4), in_stock=BOOL),
    "recipe": obj(name=STR, servings={"type": "integer", "minimum": 1, "maximum": 12}, ingredients=arr(obj(item=STR, amount=STR)), steps=arr(STR)),
    "movie_review": obj(title=STR, year={"type": "integer", "minimum": 1888, "maximum": 2030}, rating={"type": "integer", "minimum": 1, "maximum": 10}, summary=STR),
    "geo_point": obj(lat=NUM, lon=NUM, label={"type": ["string", "null"]}),
    "pagination": obj(page={"type": "integer", "minimum": 1}, per_page=enum(10, 20, 50, 100), total=INT, has_more=BOOL),
    "log_entry": obj(ts={"type": "string", "format": "date-time"}, level=enum("DEBUG", "INFO", "WARN", "ERROR"), message=STR, context={"type": "object", "additionalProperties": STR}),
    "invoice": obj(number=STR, customer=obj(name=STR, vat=STR), lines=arr(obj(desc=STR, qty=INT, unit_price=NUM), minItems=1, maxItems=10), total=NUM),
    "classification": obj(category=enum("billing", "technical", "sales", "other"), urgent=BOOL),
    "qa_answer": obj(answer=STR, sources=arr({"type": "string", "format": "uri"}, maxItems=3), confidence=enum("low", "medium", "high")),
    "tool_choice": {"anyOf": [obj(tool={"const": "calculator"}, expression=STR), obj(tool={"const": "search"}, query=STR), obj(tool={"const": "none"})]},
    "nested_config": obj(server=obj(host=STR, port={"type": "integer", "minimum": 1, "maximum": 65535}), db=obj(url=STR, pool=INT), debug=BOOL),
    "survey": obj(respondent=STR, answers=arr(obj(question={"type": "integer", "minimum": 1, "maximum": 20}, choice=enum("a", "b", "c", "d")), maxItems=20)),
    "flight_booking": obj(origin={"type": "string", "pattern": "^[A-Z]{3}$"}, destination={"type": "string", "pattern": "^[A-Z]{3}$"}, date={"type": "string", "format": "date"}, passengers={"type": "integer", "minimum": 1, "maximum": 9}, cabin=enum("economy", "business", "first")),
    "key_value": {"type": "object", "additionalProperties": INT},
    "matrix": obj(rows=arr(arr(NUM, minItems=3, maxItems=3), minItems=3, maxItems=3)),
    "free_json": {},
}

REGEXES = {
    "integer": r"-?(0|[1-9][0-9]*)",
    "float": r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?",
    "iso_date": r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])",
    "email": r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9-]+(\.[a-zA-Z0-9-]+)*\.[a-zA-Z]{2,}",
    "url": r"https?://[a-zA-Z0-9-]+(\.[a-zA-Z0-9-]+)*(/[a-zA-Z0-9._~%-]*)*",
    "uuid": r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    "ipv4": r"((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])",
    "phone": r"(\+[0-9]{1,3} )?\([0-9]{3}\) [0-9]{3}-[0-9]{4}",
    "yes_no_maybe": r"(yes|no|maybe)",
    "sentence": r"[A-Z][a-z]+( [a-z]+){2,12}\.",
}


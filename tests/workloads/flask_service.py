"""A Flask + numpy model service for the load-test benchmark, served by gunicorn:
`gunicorn -w 2 flask_service:app`. Each request tokenizes its text in Python and runs
a small dense network in numpy."""

import numpy as np
from flask import Flask, jsonify, request

app = Flask(__name__)
WEIGHTS = np.random.default_rng(7).standard_normal((256, 256))
TEXT = "the quick brown fox jumps over the lazy dog " * 20


def preprocess(text):
    vector = np.zeros(256)
    for word in text.split():
        vector[hash(word) % 256] += 1.0
    return vector


def predict(vector):
    hidden = vector
    for _ in range(8):
        hidden = np.tanh(WEIGHTS @ hidden)
    return float(hidden.sum())


@app.route("/predict")
def handle():
    return jsonify(score=predict(preprocess(request.args.get("q", TEXT))))

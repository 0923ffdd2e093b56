"""Every prompt the pipeline sends, as functions from a row's fields to chat messages.

Three voices: the patient writer (stage `patients`), the psychologist (`respond`, and the
rewrites in `refine`), and the expert evaluator (`refine`).
"""

from typing import Sequence

from synth.examples import WorkedExample
from synth.personas import Persona

# The seed project's instruction, kept word for word so synthetic rows match its data.
DEFAULT_INSTRUCTION = (
    "You are a helpful mental health counselling assistant, please answer the mental health "
    "questions based on the patient's description. The assistant gives helpful, "
    "comprehensive, and appropriate answers to the user's questions."
)

PATIENT_SYSTEM = (
    "You write realistic messages that people send to an online counselling service, for "
    "training a support assistant. Write only the person's own message, in the first person, "
    "as they would type it: no greeting to a named counsellor, no reply, no title, no quotes "
    "around it. Do not copy wording from earlier messages; make the details specific to this "
    "person."
)


def patient_messages(topic: str, persona: Persona) -> list[dict]:
    user = (f"Write the message of a {persona.age}-year-old who is {persona.situation}, "
            f"reaching out about {topic}. Their tone is {persona.tone}. "
            f"Length: {persona.length}.")
    return [{"role": "system", "content": PATIENT_SYSTEM}, {"role": "user", "content": user}]


def respond_messages(instruction: str, patient_message: str) -> list[dict]:
    return [{"role": "system", "content": instruction},
            {"role": "user", "content": patient_message}]


EVALUATOR_SYSTEM = (
    "You are an expert psychologist who reviews answers written by a counselling assistant. "
    "Judge the answer to the patient's message on five points: accuracy (is what it says "
    "correct and in line with good practice?), empathy (does it acknowledge the person's "
    "feelings with warmth?), clarity (is it easy to follow and act on?), appropriateness (is "
    "it safe, within what a support assistant should do, and does it point to professional or "
    "emergency help when the message calls for it?) and gaps (what is missing?). Then give an "
    "overall score from 0 to 100, where 85 or more means ready to use as it is.\n"
    "Reply with one JSON object and nothing else, in this form:\n"
    '{"accuracy": "...", "empathy": "...", "clarity": "...", "appropriateness": "...", '
    '"gaps": "...", "feedback": "the concrete changes that would improve the answer", '
    '"score": 0}'
)


def _review_request(patient_message: str, answer: str) -> dict:
    return {"role": "user",
            "content": f"Patient's message:\n{patient_message}\n\nAssistant's answer:\n{answer}"}


def evaluator_messages(patient_message: str, answer: str,
                       examples: Sequence[WorkedExample] = ()) -> list[dict]:
    """[system, (example request, its verdict)..., the request]: worked examples
    (--evaluator-examples) come as earlier turns, in the same words as the real request."""
    shown = []
    for example in examples:
        shown.append(_review_request(example.patient, example.answer))
        shown.append({"role": "assistant", "content": example.verdict})
    return [{"role": "system", "content": EVALUATOR_SYSTEM}, *shown,
            _review_request(patient_message, answer)]


def rewrite_messages(instruction: str, patient_message: str, answer: str,
                     feedback: str) -> list[dict]:
    """The psychologist sees its own earlier answer, then the expert's feedback on it."""
    request = (f"An expert psychologist reviewed your answer:\n{feedback}\n\n"
               "Rewrite your answer to the patient so that it addresses this feedback. "
               "Reply with the new answer only, written to the patient.")
    return [{"role": "system", "content": instruction},
            {"role": "user", "content": patient_message},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": request}]

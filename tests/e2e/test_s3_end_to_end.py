"""s3:// images end to end: boto3 puts objects into moto_server, the openai SDK asks for them."""

from __future__ import annotations

import boto3
import pytest
from openai import APIStatusError

from chat_payloads import data_url, jpeg_bytes, user_message
from test_chat import complete


@pytest.fixture(scope="module")
def bucket(moto_endpoint):
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket="pixtral-images")
    s3.create_bucket(Bucket="not-allowed")
    s3.put_object(Bucket="not-allowed", Key="photos/cat.jpg", Body=jpeg_bytes(30, (480, 320)))
    return s3


def test_s3_image_equals_the_same_bytes_inline(client, bucket):
    payload = jpeg_bytes(30, (480, 320))
    bucket.put_object(Bucket="pixtral-images", Key="photos/cat.jpg", Body=payload, ContentType="image/jpeg")
    by_s3 = complete(client, [user_message("s3://pixtral-images/photos/cat.jpg")])
    by_data = complete(client, [user_message(data_url(payload))])
    assert by_s3.usage.prompt_tokens == by_data.usage.prompt_tokens
    assert by_s3.choices[0].message.content == by_data.choices[0].message.content


def test_missing_s3_key_is_a_400_naming_the_url(client, bucket):
    with pytest.raises(APIStatusError) as info:
        complete(client, [user_message("s3://pixtral-images/photos/missing.jpg")])
    assert info.value.status_code == 400
    assert info.value.body["code"] == "image_not_found"
    assert "s3://pixtral-images/photos/missing.jpg" in info.value.body["message"]
    assert info.value.body["param"] == "messages[0].content[1].image_url.url"


def test_bucket_outside_the_allow_list_looks_like_a_missing_object(client, bucket):
    """The object exists, but its bucket is not in s3_allowed_buckets: same answer as a missing key."""
    answers = []
    for url in ("s3://not-allowed/photos/cat.jpg", "s3://pixtral-images/photos/nothing.jpg"):
        with pytest.raises(APIStatusError) as info:
            complete(client, [user_message(url)])
        answers.append((info.value.status_code, {**info.value.body, "message": info.value.body["message"].replace(url, "<url>")}))
    assert answers[0] == answers[1]
    assert answers[0][0] == 400 and answers[0][1]["code"] == "image_not_found"

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

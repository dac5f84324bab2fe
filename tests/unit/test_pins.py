"""Layer version ARNs pinned in consumer templates are found wherever a template writes them."""

from layershift_core.pins import find_pins, resolve_hint

SAM = """\
Globals:
  Function:
    Layers:
      - arn:aws:lambda:us-east-1:123456789012:layer:ls-common:7
Resources:
  Orders:
    Type: AWS::Serverless::Function
    Properties:
      Layers:
        - !Sub arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:layer:ls-common:9
        - "{{resolve:ssm:/layershift/common/arn}}"
        - arn:aws:lambda:eu-west-1:999999999999:layer:someone-else:3
"""


def test_literal_and_sub_pins_are_found_with_their_lines() -> None:
    pins = find_pins(SAM, "template.yaml")
    assert [(p.line, p.layer_name, p.version) for p in pins] == [
        (4, "ls-common", 7),
        (10, "ls-common", 9),
        (12, "someone-else", 3),
    ]
    assert pins[1].text == "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:layer:ls-common:9"


def test_a_pin_with_pseudo_parameters_matches_any_region_and_account_but_not_another_version() -> None:
    sub = find_pins(SAM)[1]
    assert sub.matches("arn:aws:lambda:us-east-1:123456789012:layer:ls-common:9")
    assert sub.matches("arn:aws:lambda:eu-west-1:111111111111:layer:ls-common:9")
    assert not sub.matches("arn:aws:lambda:us-east-1:123456789012:layer:ls-common:10")
    literal = find_pins(SAM)[0]
    assert not literal.matches("arn:aws:lambda:eu-west-1:123456789012:layer:ls-common:7")
    assert literal.same_layer("arn:aws:lambda:us-east-1:123456789012:layer:ls-common:12")
    assert not literal.same_layer("arn:aws:lambda:us-east-1:123456789012:layer:ls-common-x:7")


def test_json_templates_and_resolve_references() -> None:
    text = '{"Resources": {"F": {"Properties": {"Layers": ["arn:aws-cn:lambda:cn-north-1:123456789012:layer:x:2"]}}}}'
    (pin,) = find_pins(text)
    assert (pin.layer_name, pin.version, pin.line) == ("x", 2, 1)
    assert find_pins("Layers: ['{{resolve:ssm:/layershift/common/arn}}']") == []
    assert resolve_hint("common") == "{{resolve:ssm:/layershift/common/arn}}"
